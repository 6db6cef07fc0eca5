"""pytest-memray's plugin module name (`-p pytest_memray.plugin`): memray.pytest_plugin, loaded once by name."""

from memray._pytest_limits import LeakedObjectsFilterFunction, LeaksFilterFunction, Stack, StackFrame

pytest_plugins = ["memray.pytest_plugin"]

__all__ = ["LeakedObjectsFilterFunction", "LeaksFilterFunction", "Stack", "StackFrame"]
