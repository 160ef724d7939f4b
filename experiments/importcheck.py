"""Import a user's locustfile or WSGI app in a child process, before anything is deployed.

    python -m experiments.importcheck locustfile PATH
    python -m experiments.importcheck wsgi APP_DIR MODULE:CALLABLE [--missing-deps-ok]

Run by the plan stage (`experiments.runplan`) only. A child process because both run the
user's code: a locustfile imports Locust (which monkey-patches the process with gevent) and
an app may do anything at import time; neither may touch the CLI's process. The locustfile is
loaded by the load child's own `load_user_class`, and the app by Gunicorn's own
`gunicorn.util.import_app` from the app's directory, so the check and the real run cannot
disagree. Answer: one JSON line {"ok": bool, "message": str} on the original stdout (fd 1
is pointed at stderr first, so whatever the user's code prints cannot corrupt it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def check_locustfile(path: str) -> str:
    """'' when the file defines exactly one runnable User class, else the sentence why not."""
    from experiments.load.child import LocustfileError, load_user_class

    try:
        load_user_class(path)
    except LocustfileError as exc:
        return str(exc)
    return ""


def check_wsgi(app_dir: str, spec: str, missing_deps_ok: bool) -> str:
    """'' when Gunicorn would find a callable at `spec` from `app_dir`, else why not."""
    from gunicorn.errors import AppImportError
    from gunicorn.util import import_app

    os.chdir(app_dir)  # Gunicorn's --chdir, then its cwd goes first on sys.path
    sys.path.insert(0, app_dir)
    module = spec.split(":", 1)[0]
    try:
        import_app(spec)
    except AppImportError as exc:
        return str(exc).rstrip(".")
    except ModuleNotFoundError as exc:
        own = exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))
        if own:
            return f"there is no module {module!r} in {app_dir}"
        if missing_deps_ok:  # installed on the instance (or by pip) before Gunicorn starts
            return ""
        return (f"importing {module} needs {exc.name!r}, which is not installed; list it in "
                "--requirements")
    except SyntaxError as exc:
        return f"{exc.filename} has a syntax error at line {exc.lineno}: {exc.msg}"
    except BaseException as exc:  # noqa: BLE001 - the user's code may raise anything
        return f"importing {module} failed: {type(exc).__name__}: {exc}".rstrip(": ")
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.importcheck")
    sub = parser.add_subparsers(dest="kind", required=True)
    loc = sub.add_parser("locustfile")
    loc.add_argument("path")
    app = sub.add_parser("wsgi")
    app.add_argument("app_dir")
    app.add_argument("spec")
    app.add_argument("--missing-deps-ok", action="store_true")
    args = parser.parse_args(argv)

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.kind == "locustfile":
        problem = check_locustfile(args.path)
    else:
        with tempfile.TemporaryDirectory(prefix="scalelab-importcheck-") as data:
            os.environ["SCALELAB_DATA_DIR"] = data
            problem = check_wsgi(args.app_dir, args.spec, args.missing_deps_ok)
    out.write(json.dumps({"ok": not problem, "message": problem}) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
