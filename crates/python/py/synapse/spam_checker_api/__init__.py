from enum import Enum


class RegistrationBehaviour(Enum):
    ALLOW = "allow"
    SHADOW_BAN = "shadow_ban"
    DENY = "deny"
