"""The child end of the pipe: runtime, App, the default app. Standard library only."""
