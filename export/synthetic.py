"""Synthetic moving-shape clips and question/answer pairs for the trained demo model.

Everything is drawn with OpenCV and is a pure function of a seed, so the training set, the held-out
set and the shipped sample clip can be rebuilt bit for bit:

    spec = make_clip_spec(seed=7)               # what is in the clip (shapes, colours, motion, background)
    frames = render_clip(spec)                  # uint8 RGB [T, H, W, 3]
    write_mp4(path, frames, spec.fps)           # H.264 in MP4 (PyAV), OpenCV's MPEG-4 as fallback
    for qa in questions_for(spec, rng):         # QA(kind, question, answer)
        ...

A clip holds one to three shapes of distinct shape and colour. At most one of them moves, in a straight
line across most of the frame (left, right, up or down); the others stand still. Answers are short
fixed-form sentences so accuracy is an exact string match.

This module needs numpy and OpenCV only (no torch), so runtime tests can generate held-out clips.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {      # RGB, saturated so low-saturation backgrounds never match
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 215, 20),
    "purple": (150, 40, 190),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down", "still")
QUESTION_KINDS = ("describe", "colour", "shape", "count", "direction")

PATHS = {   # direction -> how the answer says it
    "left": "from right to left",
    "right": "from left to right",
    "up": "from bottom to top",
    "down": "from top to bottom",
}
NUMBERS = {1: "one", 2: "two", 3: "three"}

WIDTH, HEIGHT, FPS, SECONDS = 160, 120, 24.0, 3.0


@dataclass(frozen=True)
class Shape:
    kind: str                      # one of SHAPES
    colour: str                    # one of COLORS
    radius: int                    # half the side / circumradius-ish size in pixels
    start: tuple[float, float]     # centre (x, y) in pixels at t = 0
    end: tuple[float, float]       # centre at the last frame (== start when the shape stands still)


@dataclass(frozen=True)
class ClipSpec:
    seed: int
    shapes: tuple[Shape, ...]
    mover: int | None              # index into shapes of the moving shape, None when nothing moves
    direction: str                 # one of DIRECTIONS ("still" when mover is None)
    background: tuple              # ("solid", rgb) | ("gradient", rgb0, rgb1, axis) | ("grid", rgb, line_rgb, step)
    width: int = WIDTH
    height: int = HEIGHT
    fps: float = FPS
    frame_count: int = int(FPS * SECONDS)


@dataclass(frozen=True)
class QA:
    kind: str          # one of QUESTION_KINDS
    question: str
    answer: str


# ----------------------------------------------------------------------------------------------- scene

def make_clip_spec(seed: int, *, direction: str | None = None, count: int | None = None,
                   width: int = WIDTH, height: int = HEIGHT, fps: float = FPS, seconds: float = SECONDS) -> ClipSpec:
    """A random scene, fully determined by ``seed`` (and the optional fixed ``direction`` / ``count``)."""
    rng = np.random.default_rng(seed)
    count = count or int(rng.integers(1, 4))
    direction = direction or str(rng.choice(DIRECTIONS))
    kinds = rng.permutation(SHAPES)[:count]
    colours = rng.permutation(list(COLORS))[:count]
    for _ in range(2000):
        shapes = _place(rng, kinds, colours, direction, width, height)
        if shapes is not None:
            break
    else:  # pragma: no cover - the layout always fits at 160x120 with <= 3 shapes
        raise RuntimeError(f"could not place {count} shapes for seed {seed}")
    mover = None if direction == "still" else 0
    return ClipSpec(seed=seed, shapes=shapes, mover=mover, direction=direction,
                    background=_background(rng), width=width, height=height, fps=fps,
                    frame_count=int(round(fps * seconds)))


def _place(rng, kinds, colours, direction, width, height) -> tuple[Shape, ...] | None:
    """Shape 0 is the mover (if any); the others stand clear of its path."""
    shapes: list[Shape] = []
    for i, (kind, colour) in enumerate(zip(kinds, colours)):
        r = int(rng.integers(15, 20))           # >= ~1.7 soft tokens across: shape is visible per token
        if i == 0 and direction != "still":
            start, end = _path(rng, direction, r, width, height)
        else:
            p = (float(rng.uniform(r + 2, width - r - 2)), float(rng.uniform(r + 2, height - r - 2)))
            start = end = p
        shape = Shape(str(kind), str(colour), r, start, end)
        if any(_collides(shape, other) for other in shapes):
            return None
        shapes.append(shape)
    return tuple(shapes)


def _path(rng, direction, r, width, height):
    margin = r + 3
    if direction in ("left", "right"):
        y = float(rng.uniform(margin, height - margin))
        a, b = float(rng.uniform(margin, 0.25 * width)), float(rng.uniform(0.75 * width, width - margin))
        start, end = (a, y), (b, y)
    else:
        x = float(rng.uniform(margin, width - margin))
        a, b = float(rng.uniform(margin, 0.25 * height)), float(rng.uniform(0.75 * height, height - margin))
        start, end = (x, a), (x, b)
    return (end, start) if direction in ("left", "up") else (start, end)


def _collides(a: Shape, b: Shape) -> bool:
    """True when b's disc comes near any point of a's path (both paths are segments)."""
    gap = a.radius + b.radius + 6
    return _segment_distance(a.start, a.end, b.start, b.end) < gap


def _segment_distance(p0, p1, q0, q1) -> float:
    samples = np.linspace(0.0, 1.0, 33)
    p = np.array(p0) + samples[:, None] * (np.array(p1) - np.array(p0))
    q = np.array(q0) + samples[:, None] * (np.array(q1) - np.array(q0))
    return float(np.min(np.linalg.norm(p[:, None, :] - q[None, :, :], axis=-1)))


def _background(rng) -> tuple:
    def dull() -> tuple[int, int, int]:        # low saturation, any brightness
        grey = rng.uniform(40, 215)
        return tuple(int(np.clip(grey + rng.uniform(-18, 18), 0, 255)) for _ in range(3))
    style = rng.choice(["solid", "gradient", "grid"])
    if style == "solid":
        return ("solid", dull())
    if style == "gradient":
        return ("gradient", dull(), dull(), int(rng.integers(0, 2)))
    base = dull()
    line = tuple(int(np.clip(c + rng.choice([-35, 35]), 0, 255)) for c in base)
    return ("grid", base, line, int(rng.integers(12, 28)))


# ----------------------------------------------------------------------------------------------- drawing

def render_background(spec: ClipSpec) -> np.ndarray:
    w, h, bg = spec.width, spec.height, spec.background
    if bg[0] == "solid":
        return np.full((h, w, 3), bg[1], np.uint8)
    if bg[0] == "gradient":
        n = w if bg[3] == 0 else h
        t = np.linspace(0.0, 1.0, n)[:, None]
        ramp = (1 - t) * np.array(bg[1]) + t * np.array(bg[2])
        img = ramp[None, :, :] if bg[3] == 0 else ramp[:, None, :]
        return np.broadcast_to(img, (h, w, 3)).round().astype(np.uint8).copy()
    img = np.full((h, w, 3), bg[1], np.uint8)
    step = bg[3]
    img[::step, :] = bg[2]
    img[:, ::step] = bg[2]
    return img


def shape_center(shape: Shape, t: float) -> tuple[float, float]:
    """Centre at fraction t in [0, 1] of the clip."""
    return (shape.start[0] + t * (shape.end[0] - shape.start[0]), shape.start[1] + t * (shape.end[1] - shape.start[1]))


def draw_shape(img: np.ndarray, shape: Shape, center: tuple[float, float]) -> None:
    colour = COLORS[shape.colour]
    shift = 4                                   # sub-pixel precision for smooth motion
    scale = 1 << shift
    cx, cy, r = center[0], center[1], shape.radius
    if shape.kind == "circle":
        cv2.circle(img, (round(cx * scale), round(cy * scale)), round(r * scale), colour, -1, cv2.LINE_AA, shift)
        return
    if shape.kind == "square":
        s = r * 0.9
        pts = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    else:  # triangle, apex up
        pts = [(cx, cy - r * 1.1), (cx + r * 1.1, cy + r * 0.8), (cx - r * 1.1, cy + r * 0.8)]
    poly = np.round(np.array(pts) * scale).astype(np.int32)
    cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, shift)


def render_frame(spec: ClipSpec, index: int, background: np.ndarray | None = None) -> np.ndarray:
    img = (render_background(spec) if background is None else background).copy()
    t = index / max(spec.frame_count - 1, 1)
    for shape in spec.shapes:
        draw_shape(img, shape, shape_center(shape, t))
    return img


def render_clip(spec: ClipSpec) -> np.ndarray:
    """All frames, uint8 RGB [T, H, W, 3]."""
    background = render_background(spec)
    return np.stack([render_frame(spec, i, background) for i in range(spec.frame_count)])


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, *, qp: int = 20) -> Path:
    """Encode RGB frames as H.264 in MP4 with PyAV; OpenCV MPEG-4 without PyAV.

    Constant QP and one thread: the same frames give the same bitstream every time (CRF rate control
    gave a slightly different stream on every run here), so training data and the sample clip rebuild
    exactly."""
    path = Path(path)
    try:
        import av
    except ImportError:
        return _write_mp4_opencv(path, frames, fps)
    from fractions import Fraction
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qp": str(qp), "preset": "medium", "threads": "1"}
        stream.codec_context.thread_count = 1
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_mp4_opencv(path: Path, frames: np.ndarray, fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames.shape[2], frames.shape[1]))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a video writer for {path}")
    for rgb in frames:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


# ----------------------------------------------------------------------------------------------- language

def describe(spec: ClipSpec) -> str:
    if spec.mover is not None:
        s = spec.shapes[spec.mover]
        return f"a {s.colour} {s.kind} moves {PATHS[spec.direction]}."
    if len(spec.shapes) == 1:
        s = spec.shapes[0]
        return f"a {s.colour} {s.kind} stands still."
    return f"{NUMBERS[len(spec.shapes)]} shapes stand still."


def motion_of(spec: ClipSpec, index: int) -> str:
    return PATHS[spec.direction] if index == spec.mover else "still"


def _movement(subject: str, spec: ClipSpec, index: int) -> str:
    if index == spec.mover:
        return f"{subject} moves {PATHS[spec.direction]}."
    return f"{subject} stands still."


def answer(spec: ClipSpec, kind: str, index: int = 0) -> str:
    """The fixed-form answer to a question of ``kind`` about shape ``index``."""
    s = spec.shapes[index]
    if kind == "describe":
        return describe(spec)
    if kind == "colour":
        return f"the {s.kind} is {s.colour}."
    if kind == "shape":
        return f"the {s.colour} shape is a {s.kind}."
    if kind == "count":
        n = len(spec.shapes)
        return "there is one shape." if n == 1 else f"there are {NUMBERS[n]} shapes."
    if kind == "direction":
        return _movement(f"the {s.kind}", spec, index)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {', '.join(QUESTION_KINDS)}")


QUESTION_FORMS: dict[str, tuple[str, ...]] = {
    "describe": ("What happens in this video?", "Describe the video.", "What is going on in this clip?"),
    "colour": ("What colour is the {kind}?", "What color is the {kind}?", "Which colour does the {kind} have?"),
    "shape": ("What shape is the {colour} object?", "Which shape is {colour}?", "What is the {colour} shape?"),
    "count": ("How many shapes are there?", "How many objects are in the video?", "Count the shapes."),
    "direction": ("Which way does the {kind} move?", "In which direction does the {kind} move?",
                  "Where does the {kind} go?"),
}


def question(spec: ClipSpec, kind: str, index: int = 0, form: int = 0) -> QA:
    s = spec.shapes[index]
    text = QUESTION_FORMS[kind][form % len(QUESTION_FORMS[kind])].format(kind=s.kind, colour=s.colour)
    return QA(kind, text, answer(spec, kind, index))


def questions_for(spec: ClipSpec, rng: np.random.Generator | None = None) -> list[QA]:
    """One question of every kind, with a random phrasing and (where it applies) a random referent;
    direction questions ask about the mover twice as often as about a static shape."""
    rng = rng or np.random.default_rng(spec.seed)
    out = []
    for kind in QUESTION_KINDS:
        index = int(rng.integers(len(spec.shapes)))
        if kind == "direction" and spec.mover is not None and rng.random() < 0.5:
            index = spec.mover
        out.append(question(spec, kind, index, int(rng.integers(len(QUESTION_FORMS[kind])))))
    return out


def all_questions(spec: ClipSpec, rng: np.random.Generator | None = None) -> list[QA]:
    """Every question the clip supports, each in a random phrasing: describe and count once, colour, shape
    and direction once per shape (asking about each shape of the same clip is what teaches the model to
    tell them apart)."""
    rng = rng or np.random.default_rng(spec.seed)
    out = []
    for kind in QUESTION_KINDS:
        for index in (range(len(spec.shapes)) if kind in ("colour", "shape", "direction") else (0,)):
            out.append(question(spec, kind, index, int(rng.integers(len(QUESTION_FORMS[kind])))))
    return out


def vocabulary() -> list[str]:
    """Every word the questions and answers use (lower-case, punctuation split off), sorted."""
    words: set[str] = set()
    texts = [f for forms in QUESTION_FORMS.values() for f in forms] + list(PATHS.values())
    texts += ["a the is are there one two three shapes shape stands still moves stand nothing"]
    texts += list(COLORS) + list(SHAPES)
    for text in texts:
        for word in text.replace("{kind}", "").replace("{colour}", "").replace("?", " ? ").replace(".", " . ").split():
            words.add(word.lower())
    return sorted(words)


def sample_clip_spec() -> ClipSpec:
    """The clip shipped as ``edgevid/demo/sample.mp4``: a red circle moves from left to right while a
    blue square stands still, over a grey gradient. Answer to "What happens in this video?":
    "a red circle moves from left to right."."""
    return ClipSpec(
        seed=-1,
        shapes=(Shape("circle", "red", 17, (28.0, 72.0), (132.0, 72.0)),
                Shape("square", "blue", 16, (96.0, 26.0), (96.0, 26.0))),
        mover=0, direction="right", background=("gradient", (170, 170, 165), (105, 110, 112), 1),
    )


def label_maps(spec: ClipSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel classes of frame ``index``: (colour map, shape map), uint8 [H, W]; 0 = background,
    colour k + 1 = ``list(COLORS)[k]``, shape k + 1 = ``SHAPES[k]``. Dense targets for training aids."""
    colour_map = np.zeros((spec.height, spec.width), np.uint8)
    shape_map = np.zeros_like(colour_map)
    t = index / max(spec.frame_count - 1, 1)
    for shape in spec.shapes:
        mask = np.zeros((spec.height, spec.width, 3), np.uint8)
        draw_shape(mask, replace(shape, colour="red"), shape_center(shape, t))
        covered = mask[..., 0] > 127
        colour_map[covered] = list(COLORS).index(shape.colour) + 1
        shape_map[covered] = SHAPES.index(shape.kind) + 1
    return colour_map, shape_map
