"""The pure core: definitions, events, the decider. No I/O, no clock, no anyio."""
