"""Exercise checks for chapter 6."""
__all__: list[str] = []
