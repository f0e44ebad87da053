"""Boolean flags as users type them: `--dry-run`, and also `--dry-run true`, `--dry-run=false`.

Click flags take no value, so `--dry-run true` would be an "unexpected extra argument". Before click parses
the command line, a boolean word right after a flag (or after `=`) is folded into the flag.
"""

from __future__ import annotations

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}


def _flags_of(command) -> set[str]:
    # duck-typed: typer's options are its own classes, not click.Option subclasses
    return {opt for p in command.params if getattr(p, "is_flag", False) for opt in p.opts}


def normalise(argv: list[str], root) -> list[str]:
    """`argv` (without the program name; `root`: the click command of the app) with every `FLAG true|false` and `FLAG=true|false` made plain."""
    command, flags, out = root, _flags_of(root), []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in (getattr(command, "commands", None) or {}):
            command = command.commands[token]
            flags = _flags_of(command)
            out.append(token)
        elif "=" in token and token.split("=", 1)[0] in flags and token.split("=", 1)[1].lower() in TRUE | FALSE:
            name, value = token.split("=", 1)
            out += [name] if value.lower() in TRUE else []
        elif token in flags and i + 1 < len(argv) and argv[i + 1].lower() in TRUE | FALSE:
            out += [token] if argv[i + 1].lower() in TRUE else []
            i += 1
        else:
            out.append(token)
        i += 1
    return out
