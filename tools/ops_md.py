"""Regenerate OPS.md: the TF Lite ops of every exported module, from real builds.

    python tools/ops_md.py            # builds each test fixture's variants in a temporary folder

Each fixture under tests/fixtures/ is a small model that exercises one set of config features
(first-order, zero-order, scale_factor 1, ...); the ops of a module depend on those features, not on
its size, so the published configs share the lists of the fixture with their features. For each
fixture the modules are built with build.py's defaults and with every flag that changes a graph
(VARIANTS); utils.tflite_ops lists the ops of each .tflite. tests/test_exports.py rebuilds a fixture
and checks that OPS.md holds what `op_lists` gives for it.
"""
import os
import re
import sys
import tempfile

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, REPO_DIR)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OPS_MD = os.path.join(REPO_DIR, "OPS.md")
FIXTURES_DIR = os.path.join(REPO_DIR, "tests", "fixtures")
MODEL = "config"  # build.py names a --config build after the file's stem: config.yaml -> config

# variant -> (build.py flags, modules the flags change, whether it is the -float16 file)
VARIANTS = {
    "default": ((), ("kp_detector", "process_kp_driving", "generator"), False),
    "--float16": (("--float16",), ("kp_detector", "process_kp_driving", "generator"), True),
    "--staticbatchsize 4": (("--staticbatchsize", "4"), ("kp_detector", "process_kp_driving", "generator"), False),
    "--prescale": (("--prescale",), ("kp_detector", "generator"), False),
    "--predictiononly": (("--predictiononly",), ("generator",), False),
    "--hardcode 11": (("--hardcode", "11"), ("process_kp_driving",), False),
}

NOTES = """\
## Notes for delegate users

- **Builtin ops only.** Every file is converted with `TFLITE_BUILTINS` alone: no Flex (SELECT_TF_OPS)
  and no custom ops, so the stock TF Lite / LiteRT runtime runs them. Variables are frozen into
  constants (no VAR_HANDLE / READ_VARIABLE).
- **GATHER** (generator): grid sampling (the dense motion warp, `deformed`, the sparse deformations)
  reads source pixels at indices computed at run time. There is no GATHER_ND. A delegate without
  GATHER support hands those nodes back to the CPU, so the graph runs partitioned (check your
  delegate's op list); XNNPACK (the default CPU delegate) and the reference kernels run everything.
- **Index arithmetic** (generator): CAST, FLOOR, FLOOR_DIV, FLOOR_MOD, RANGE and the comparison /
  LOGICAL_AND ops build those indices in int32 and float32; some NPU delegates take float ops only.
- **Dynamic batch.** The default files have a dynamic batch dimension (shape signature -1), which
  adds shape arithmetic (SHAPE, STRIDED_SLICE, PACK, ...) and makes every intermediate shape dynamic.
  Hardware delegates generally need static shapes: build with `--staticbatchsize N` (its op lists
  are given below) and run those files with `run.py --batchsize N --exactbatch`.
- **float16** (`--float16`): weights are stored as float16 and expanded to float32 by DEQUANTIZE when
  the model is loaded, so the CPU computes in float32 and the file is about half the size; the GPU
  delegate can run float16 natively.
- **Inputs and outputs** of each file are listed, with tensor indices, shapes and dtypes, in the JSON
  beside it (`tflite/<model>/<module>.json`).
"""


def build_variants(config, checkpoint, outdir):
    """Build every VARIANTS entry of one model under outdir/<variant number>/; {variant: root}."""
    import build

    roots = {}
    for number, (variant, (flags, modules, _)) in enumerate(VARIANTS.items()):
        roots[variant] = os.path.join(outdir, str(number))
        for module in modules:
            code = build.main(["--config", config, "--checkpoint", checkpoint, "--outdir", roots[variant],
                               "--module", module, *flags])
            if code != 0:
                raise SystemExit(f"build.py failed for {config} {variant} {module}")
    return roots


def op_lists(roots, model):
    """{module: {variant: sorted op names}} from the variant builds in `roots` ({variant: export root})."""
    import utils

    lists = {}
    for variant, root in roots.items():
        _, modules, float16 = VARIANTS[variant]
        for module in modules:
            lists.setdefault(module, {})[variant] = utils.tflite_ops(utils.tflite_path(root, model, module, float16))
    return lists


def render_module(module, variants):
    """A module's op lists: the default in full, each other variant as its difference from it."""
    default = variants["default"]
    lines = [f"#### {module}", "", f"- default ({len(default)} ops): {_codes(default)}"]
    for variant, ops in variants.items():
        if variant == "default":
            continue
        added = sorted(set(ops) - set(default))
        removed = sorted(set(default) - set(ops))
        if not added and not removed:
            change = "same as default"
        else:
            change = "default" + (f" + {_codes(added)}" if added else "") + (f" − {_codes(removed)}" if removed else "")
        lines.append(f"- `{variant}`: {change}")
    return "\n".join(lines) + "\n"


def _codes(names):
    return " ".join(f"`{name}`" for name in names)


def render(sections):
    """OPS.md from [(fixture name, description, {module: {variant: ops}})]."""
    union = sorted({op for _, _, lists in sections for variants in lists.values()
                    for ops in variants.values() for op in ops})
    parts = [
        "# TF Lite ops",
        "",
        "Generated by `python tools/ops_md.py` from real `build.py` exports (`utils.tflite_ops` on each",
        "`.tflite`); do not edit by hand. The lists depend on a config's features, not on its size: the",
        "published configs (all first-order, with occlusion and `scale_factor: 0.25`) have the lists of the",
        "`vox` section. SavedModels use more TensorFlow ops; the converter fuses or folds them away.",
        "",
        f"Every op any module uses ({len(union)}): {_codes(union)}",
        "",
        NOTES,
        "## Ops per module",
        "",
    ]
    for name, description, lists in sections:
        parts += [f"### {name}", "", description, ""]
        parts += [render_module(module, lists[module]) for module in ("kp_detector", "process_kp_driving", "generator")]
    return "\n".join(parts).rstrip() + "\n"


def parse(text):
    """{fixture name: {module: {variant: ops}}} back from OPS.md."""
    sections, fixture, module = {}, None, None
    for line in text.splitlines():
        if line.startswith("### "):
            fixture = line[4:].strip()
            sections[fixture] = {}
        elif line.startswith("#### ") and fixture is not None:
            module = line[5:].strip()
            sections[fixture][module] = {}
        elif line.startswith("- ") and module is not None and fixture is not None:
            variant, ops = _parse_item(line[2:], sections[fixture][module].get("default"))
            sections[fixture][module][variant] = ops
    return sections


def _parse_item(item, default):
    head, _, body = item.partition(": ")
    if head.startswith("default"):
        return "default", re.findall(r"`([^`]+)`", body)
    variant = head.strip("`")
    if body == "same as default":
        return variant, list(default)
    added, _, removed = body.partition(" − ")
    ops = (set(default) | set(re.findall(r"`([^`]+)`", added))) - set(re.findall(r"`([^`]+)`", removed))
    return variant, sorted(ops)


def fixture_description(fixture_dir):
    """The fixture's 'covers' line from its expected.json, e.g. 'first-order, occlusion, ...'."""
    import json

    with open(os.path.join(fixture_dir, "expected.json"), encoding="utf-8") as f:
        return json.load(f).get("covers", "")


def main():
    fixtures = sorted(name for name in os.listdir(FIXTURES_DIR)
                      if os.path.isfile(os.path.join(FIXTURES_DIR, name, "legacy.pth.tar")))
    sections = []
    with tempfile.TemporaryDirectory() as outdir:
        for name in fixtures:
            fixture_dir = os.path.join(FIXTURES_DIR, name)
            roots = build_variants(os.path.join(fixture_dir, "config.yaml"),
                                   os.path.join(fixture_dir, "legacy.pth.tar"), os.path.join(outdir, name))
            sections.append((name, fixture_description(fixture_dir), op_lists(roots, MODEL)))
    with open(OPS_MD, "w", encoding="utf-8") as f:
        f.write(render(sections))
    print(f"wrote {OPS_MD} ({len(sections)} fixtures)")


if __name__ == "__main__":
    main()
