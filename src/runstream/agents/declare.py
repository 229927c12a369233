"""Declaring what an agent takes: ``@agent(input=Model, description=...)``.

.. code-block:: python

    from collections.abc import AsyncIterator

    from pydantic import BaseModel
    from runstream.agents import RunContext, agent


    class ShoutInput(BaseModel):
        text: str


    @agent(input=ShoutInput, description="Yields the text in capitals, word by word.")
    async def shout(ctx: RunContext, input: dict) -> AsyncIterator[dict]:
        for word in ShoutInput.model_validate(input).text.split():
            yield {"type": "token", "text": word.upper()}

The API then refuses a bad input with 422 before the run is queued, and ``GET /agents``
shows the model's JSON schema. Without the decorator an agent takes any JSON object and
its description is the first paragraph of its docstring.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., object])

INPUT_ATTR = "__runstream_input__"
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
DESCRIPTION_ATTR = "__runstream_description__"


def agent(
    *, input: type[BaseModel] | None = None, description: str | None = None
) -> Callable[[F], F]:
    """Attach an input model and a description to an agent function (returned as is)."""

    def mark(function: F) -> F:
        setattr(function, INPUT_ATTR, input)
        setattr(function, DESCRIPTION_ATTR, description)
        return function

    return mark


def declared_input(function: object) -> type[BaseModel] | None:
    """The input model an agent declared with :func:`agent`, if any."""
    model = getattr(function, INPUT_ATTR, None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def description_of(function: object) -> str:
    """The description an agent declared, else its docstring's first paragraph."""
    declared = getattr(function, DESCRIPTION_ATTR, None)
    if isinstance(declared, str) and declared.strip():
        return declared.strip()
    doc = inspect.getdoc(function) or ""
    first = " ".join(doc.split("\n\n", 1)[0].split())
    # Docstrings are written for Sphinx; clients get plain text.
    return _ROLE.sub(r"\1", first).replace("``", "")
