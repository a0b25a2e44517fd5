"""The virtual vehicle: DBC-driven traffic, driving physics, transports, replay and recording."""

__all__: list[str] = []
