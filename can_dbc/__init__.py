"""DBC loading tolerant of real-world files, and the compiled signal decoder."""

__all__: list[str] = []
