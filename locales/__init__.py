"""The message catalogs (``<lang>/LC_MESSAGES/gridbot.po``), shipped as package data.

This folder is a package only so that an installed Gridbot (a wheel, ``pip install .``) finds
its catalogs through :mod:`importlib.resources`, wherever site-packages is.
"""
