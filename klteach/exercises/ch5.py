"""Exercise checks for chapter 5."""
__all__: list[str] = []
