"""The task board demo: a shared board of cards that updates live in every browser."""
# The page is a Flask blueprint: ``sbio run`` registers the module-level ``blueprint``
# of every namespace module (the board package exports it in __init__.py).
from flask import Blueprint, render_template

from .namespace import USERS

blueprint = Blueprint("board", __name__, url_prefix="/board", template_folder="templates")


@blueprint.route("/")
def index():
    return render_template("board.html", demo_users=sorted(USERS))
