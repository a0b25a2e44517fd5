"""Reserved for a later issue; see ../shared/design.md for what this package will own."""

__all__: list[str] = []
