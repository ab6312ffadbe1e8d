class ConfigError(Exception):
    """A configuration problem; `path` locates it below the module's `config:`."""

    def __init__(self, msg, path=None):
        super().__init__(msg)
        self.msg = msg
        self.path = path
