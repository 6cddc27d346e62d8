"""Regenerate OPS.md: the TF Lite and ONNX ops of every exported module, from real builds.

    python tools/ops_md.py            # builds each test fixture's variants in a temporary folder
                                      # (needs requirements-onnx.txt for the ONNX lists)

Each fixture under tests/fixtures/ is a small model that exercises one set of config features
(first-order, zero-order, scale_factor 1, ...); the ops of a module depend on those features, not on
its size, so the published configs share the lists of the fixture with their features. For each
fixture the modules are built with build.py's defaults and with every flag that changes a graph
(VARIANTS), with --onnx; export_files.tflite_ops lists the ops of each .tflite, export_files.onnx_ops those of each
.onnx (every variant but float16, which is TF Lite's alone: ONNX_VARIANTS). tests/test_exports.py and
tests/test_onnx.py rebuild a fixture and check that OPS.md holds what `op_lists` and `onnx_op_lists`
give for it.
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
ONNX_VARIANTS = [variant for variant, (_, _, float16) in VARIANTS.items() if not float16]
MODULES = ("kp_detector", "process_kp_driving", "generator")
TFLITE_HEADING = "## TF Lite ops per module"
ONNX_HEADING = "## ONNX ops per module"

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

ONNX_NOTES = """\
`build.py --onnx` converts each SavedModel with tf2onnx (opset 17; `export_files.onnx_ops` on each `.onnx`,
the bodies of control-flow ops included). Every op is in the standard `ai.onnx` domain (the ONNX
checker passes on each file), so any runtime of that opset runs them; `run.py --target onnx` uses
onnxruntime's CPU provider. Inputs and outputs keep the signature's names; the default files have a
dynamic batch dimension, and the JSON beside each file (`onnx/<model>/<module>.json`) lists names,
shapes (-1 = dynamic) and dtypes.
"""


def build_variants(config, checkpoint, outdir):
    """Build every VARIANTS entry of one model under outdir/<variant number>/, with --onnx for
    ONNX_VARIANTS; {variant: root}."""
    import build

    roots = {}
    for number, (variant, (flags, modules, _)) in enumerate(VARIANTS.items()):
        roots[variant] = os.path.join(outdir, str(number))
        onnx = ("--onnx",) if variant in ONNX_VARIANTS else ()
        for module in modules:
            code = build.main(["--config", config, "--checkpoint", checkpoint, "--outdir", roots[variant],
                               "--module", module, *flags, *onnx])
            if code != 0:
                raise SystemExit(f"build.py failed for {config} {variant} {module}")
    return roots


def op_lists(roots, model):
    """{module: {variant: sorted op names}} from the variant builds in `roots` ({variant: export root})."""
    import export_files

    lists = {}
    for variant, root in roots.items():
        _, modules, float16 = VARIANTS[variant]
        for module in modules:
            lists.setdefault(module, {})[variant] = export_files.tflite_ops(export_files.tflite_path(root, model, module, float16))
    return lists


def onnx_op_lists(roots, model):
    """{module: {variant: sorted ONNX op types}} from the ONNX_VARIANTS builds in `roots` ({variant: export root})."""
    import export_files

    lists = {}
    for variant in ONNX_VARIANTS:
        _, modules, _ = VARIANTS[variant]
        for module in modules:
            lists.setdefault(module, {})[variant] = export_files.onnx_ops(export_files.onnx_path(roots[variant], model, module))
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


def _union(sections):
    return sorted({op for _, _, lists in sections for variants in lists.values() for ops in variants.values()
                   for op in ops})


def _fixture_parts(sections):
    parts = []
    for name, description, lists in sections:
        parts += [f"### {name}", "", description, ""]
        parts += [render_module(module, lists[module]) for module in MODULES]
    return parts


def render(sections, onnx_sections):
    """OPS.md from [(fixture name, description, {module: {variant: ops}})] of TF Lite and of ONNX."""
    union, onnx_union = _union(sections), _union(onnx_sections)
    parts = [
        "# TF Lite and ONNX ops",
        "",
        "Generated by `python tools/ops_md.py` from real `build.py` exports (`export_files.tflite_ops` on each",
        "`.tflite`, `export_files.onnx_ops` on each `.onnx`); do not edit by hand. The lists depend on a config's",
        "features, not on its size: the published configs (all first-order, with occlusion and",
        "`scale_factor: 0.25`) have the lists of the `vox` sections. One exception: where the generator's",
        "bottleneck has at least 128 channels (256 in every published config), its float32 and float16 TF Lite",
        "files (generator, generator_cached) compute the bottleneck's 3x3 convs with Winograd's algorithm and",
        "add `SPACE_TO_DEPTH` to their lists (the fixtures' 16-channel bottlenecks keep the plain convs).",
        "SavedModels use more TensorFlow ops; the converters fuse or fold them away.",
        "[ONNX](#onnx-ops-per-module) follows TF Lite.",
        "",
        f"Every TF Lite op any module uses ({len(union)}): {_codes(union)}",
        "",
        NOTES,
        TFLITE_HEADING,
        "",
        *_fixture_parts(sections),
        ONNX_HEADING,
        "",
        ONNX_NOTES,
        f"Every ONNX op any module uses ({len(onnx_union)}): {_codes(onnx_union)}",
        "",
        *_fixture_parts(onnx_sections),
    ]
    return "\n".join(parts).rstrip() + "\n"


def parse(text, export="tflite"):
    """{fixture name: {module: {variant: ops}}} of `export` ('tflite' or 'onnx') back from OPS.md."""
    heading = {"tflite": TFLITE_HEADING, "onnx": ONNX_HEADING}[export]
    sections, fixture, module, inside = {}, None, None, False
    for line in text.splitlines():
        if line.startswith("## "):
            inside, fixture, module = line.strip() == heading, None, None
        elif not inside:
            continue
        elif line.startswith("### "):
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
    sections, onnx_sections = [], []
    with tempfile.TemporaryDirectory() as outdir:
        for name in fixtures:
            fixture_dir = os.path.join(FIXTURES_DIR, name)
            roots = build_variants(os.path.join(fixture_dir, "config.yaml"),
                                   os.path.join(fixture_dir, "legacy.pth.tar"), os.path.join(outdir, name))
            description = fixture_description(fixture_dir)
            sections.append((name, description, op_lists(roots, MODEL)))
            onnx_sections.append((name, description, onnx_op_lists(roots, MODEL)))
    with open(OPS_MD, "w", encoding="utf-8") as f:
        f.write(render(sections, onnx_sections))
    print(f"wrote {OPS_MD} ({len(sections)} fixtures)")


if __name__ == "__main__":
    main()
