"""Workers: take runs from the queue, execute their agents, write their events."""
