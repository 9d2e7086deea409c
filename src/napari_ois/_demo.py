"""Placeholder for ``napari-ois demo`` (the plugin work replaces this module)."""


def add_parsers(sub) -> None:
    pass
