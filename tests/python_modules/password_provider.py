"""A password auth provider: a custom login type, m.login.password for one user, 3PID logins."""


class Provider:
    def __init__(self, config, api):
        self.api = api
        self.logged_out = []
        api.register_password_auth_provider_callbacks(
            auth_checkers={
                ("org.example.token", ("token",)): self.check_token,
                ("m.login.password", ("password",)): self.check_password,
            },
            check_3pid_auth=self.check_3pid,
            on_logged_out=self.on_logged_out,
            get_username_for_registration=self.username_for_registration,
            get_displayname_for_registration=self.displayname_for_registration,
        )

    async def check_token(self, username, login_type, login_dict):
        if login_dict.get("token") == "open-sesame":
            return self.api.get_qualified_user_id(username), None
        return None

    async def check_password(self, username, login_type, login_dict):
        # `username` is as the client gave it, a localpart or a full user ID (Synapse's rule).
        user_id = self.api.get_qualified_user_id(username) if not username.startswith("@") else username
        if login_dict.get("password") == "ldap-password" and user_id == "@alice:test":
            return user_id, None
        if login_dict.get("password") == "boom":
            raise RuntimeError("provider bug")
        return None

    async def check_3pid(self, medium, address, password):
        if medium == "email" and address == "alice@example.com" and password == "mail-password":
            return "@alice:test", None
        return None

    async def username_for_registration(self, uia_results, params):
        if params.get("username") == "pickme" and "m.login.dummy" in uia_results:
            return "chosen"
        if params.get("username") == "broken":
            raise RuntimeError("a raising hook counts as no answer")
        return None

    async def displayname_for_registration(self, uia_results, params):
        return "Named by module" if params.get("username") == "pickme" else None

    async def on_logged_out(self, user_id, device_id, access_token):
        self.logged_out.append(user_id)
