"""speechlm prepare: join a data dir with a task template into a JSONL manifest."""
import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task template name (built-in or --task-dir) or a YAML path")
    p.add_argument("--data-dir", required=True, help="Kaldi data dir")
    p.add_argument("--out-dir", required=True, help="output dir for manifest.jsonl + template.yaml")
    p.add_argument("--task-dir", action="append", default=[], help="extra dir of task templates (repeatable)")
    p.add_argument("--force", action="store_true", help="redo even if the manifest is complete")


def main(args: argparse.Namespace) -> int:
    from speechlm.data.manifest import prepare_manifest
    from speechlm.tasks import load_template

    template = load_template(args.task, args.task_dir)
    summary = prepare_manifest(template, args.data_dir, args.out_dir, force=args.force)
    return 0 if summary["kept"] else 1
