"""run.py's parsed command line as one typed object (`RunOptions`), instead of argparse's Namespace.

run.parse_args() checks every combination on the Namespace, then returns a RunOptions: every option
the pipeline reads is a declared field with its type, so a misspelt option is an AttributeError where
it is written, not a silent None, and the object pickles by reference (it lives here, not in run.py,
which is `__main__` when run) for the Ray workers that receive it. TensorFlow-free.
"""
from dataclasses import dataclass, fields
from typing import Optional


@dataclass
class RunOptions:
    # what runs
    target: str = "direct"  # direct | savedmodel | tflite | onnx
    exportdir: str = "."  # build.py's output folder for the export targets
    precision: str = "float32"  # float32 | bfloat16 | int8 (set to what the CPU runs by run.prepare)
    float16: bool = False
    int8: bool = False
    device: Optional[str] = None
    threads: Optional[int] = None
    no_cache: bool = False
    clear_cache: bool = False
    loadwithtorch: bool = False
    # the model
    model: Optional[str] = None
    config: Optional[str] = None
    checkpoint: Optional[str] = None
    prescale: bool = False
    # what is rendered
    mode: str = "animate"  # animate | reconstruction
    datamode: str = "file"  # file | dataset
    source_image: Optional[str] = None
    driving_video: Optional[str] = None
    root_dir: Optional[str] = None
    output: str = "output/result"
    dontappend: bool = False
    relative: bool = False
    adapt: bool = False
    find_best_frame: bool = False
    best_frame: Optional[int] = None
    frames: int = -1
    batch_size: int = 4
    exactbatch: bool = False
    audio: bool = False
    visualizer: bool = False
    profile: bool = False
    # faces in the wild
    crop: Optional[str] = None  # both | source | driving
    face: Optional[int] = None
    crop_box: object = None  # faces.CropBox
    driving_face: Optional[int] = None
    driving_crop_box: object = None  # faces.CropBox
    list_faces: bool = False
    # batches and Ray workers
    jobs: Optional[str] = None
    overwrite: bool = False
    workers: Optional[int] = None
    ray_address: Optional[str] = None
    # terminal
    verbose: bool = False
    quiet: bool = False

    @classmethod
    def from_namespace(cls, namespace):
        """The options of a parsed argparse Namespace; an option the parser has and this class lacks is a
        TypeError here, so the two cannot drift apart."""
        return cls(**vars(namespace))

    @classmethod
    def names(cls):
        return [field.name for field in fields(cls)]
