"""A module that does its own single sign-on (say, against a company directory) and hands the
browser back through `ModuleApi.complete_sso_login_async`, as Synapse's SSO modules do. Its
resource trusts the `user` query parameter: it stands for the module's own authentication."""

from twisted.internet import defer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class Login(Resource):
    isLeaf = True

    def __init__(self, api):
        super().__init__()
        self.api = api

    def render_GET(self, request):
        user = request.args[b"user"][0].decode()
        redirect_url = request.args[b"redirectUrl"][0].decode()
        new_user = request.args.get(b"new", [b""])[0] == b"1"
        d = defer.ensureDeferred(
            self.api.complete_sso_login_async(user, request, redirect_url, new_user=new_user,
                                              auth_provider_id="sso_module"))

        def failed(f):
            request.setResponseCode(500)
            request.write(str(f.value).encode())
            request.finish()

        d.addErrback(failed)
        return NOT_DONE_YET


class SsoModule:
    def __init__(self, config, api):
        api.register_web_resource("/_synapse/client/sso_module/login", Login(api))
