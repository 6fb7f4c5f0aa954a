"""In-process fakes of the platforms Gridbot talks to (real HTTP on 127.0.0.1)."""
