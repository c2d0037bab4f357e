"""A small chat: log in (the ACL is locked until then), join rooms, talk.

This is the example of the README and of docs/getting-started.md.
"""
from sbio import ConnectionRefused, Namespace, RpcError

#: Demo accounts; a real application checks a database.
USERS = {"ann": "secret", "bob": "secret"}


class Chat(Namespace):
    """Chat rooms with a login."""

    name = "/chat"

    def get_initial_acl(self):
        return ["on_login"]  # everything else is locked until login

    def on_connect(self, auth):
        if auth and auth.get("token") == "bad":
            raise ConnectionRefused("bad token", {"code": 401})
        self.session["user"] = None

    def on_login(self, username: str, password: str):
        if USERS.get(username) != password:
            raise RpcError("bad_credentials", "wrong user name or password")
        self.session["user"] = username
        self.lift_acl_restrictions()
        return {"user": username}

    def on_whoami(self):
        return self.session["user"]

    def on_join(self, room: str):
        self.enter_room(room)
        self.broadcast("joined", {"room": room, "user": self.session["user"]}, room=room)
        return sorted(r for r in self.rooms() if r != self.sid)

    def on_leave(self, room: str):
        self.leave_room(room)
        return sorted(r for r in self.rooms() if r != self.sid)

    def on_say(self, room: str, text: str):
        if room not in self.rooms():
            raise RpcError("not_in_room", f"join {room!r} first")
        self.broadcast("message", {"room": room, "user": self.session["user"], "text": text},
                       room=room)
        return "sent"

    def on_logout(self):
        self.session["user"] = None
        self.reset_acl()
        for room in self.rooms():  # no more messages of any room
            if room != self.sid:
                self.leave_room(room)
        return None
