"""speechlm tasks [NAME]: list task templates or print one."""
import argparse
import logging
import sys

log = logging.getLogger("speechlm.tasks")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show this template")
    p.add_argument("--task-dir", action="append", default=[], help="extra dir of task templates (repeatable)")


def main(args: argparse.Namespace) -> int:
    import yaml

    from speechlm.tasks import find_templates, load_template

    if args.name:
        sys.stdout.write(yaml.safe_dump(load_template(args.name, args.task_dir).to_dict(), sort_keys=False))
        return 0
    for name, path in find_templates(args.task_dir).items():
        t = load_template(str(path))
        sys.stdout.write(f"{name:<22} {t.description}  [{path}]\n")
    return 0
