"""One exception hierarchy for the tools, so the CLI can turn any of them into one line."""


class ToolError(Exception):
    """A problem the user can fix; str() is one line that says what to do next."""


class SchemaError(ToolError):
    """The CDDL schema could not be loaded, or a CBOR document does not match it."""


class LaunchError(ToolError):
    """A simulated node, the gateway or the receiver could not be started."""
