from synapse.api.errors import (  # noqa: F401
    Codes,
    InvalidClientCredentialsError,
    InvalidRuleException,
    RedirectException,
    RuleNotFoundException,
    SynapseError,
)
from synapse.config._base import ConfigError  # noqa: F401

__all__ = [
    "Codes", "InvalidClientCredentialsError", "RedirectException", "SynapseError", "ConfigError",
    "InvalidRuleException", "RuleNotFoundException",
]
