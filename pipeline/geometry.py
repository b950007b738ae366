"""Poses of template instances, their boxes, IoU and non-maximum suppression.

A *pose* places a ``width x height`` template in an image: the template is scaled by ``scale`` and
rotated by ``angle`` degrees about its centre (OpenCV's convention: positive turns counter-clockwise as
displayed), and its centre lands on ``(cx, cy)``. Pixel centres sit at integer coordinates, so a
template's own centre is ``((width - 1) / 2, (height - 1) / 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Pose:
    """Where one template instance lies in an image."""

    cx: float
    cy: float
    angle: float
    scale: float


def template_centre(width: int, height: int) -> tuple[float, float]:
    """The centre of a ``width x height`` image in pixel coordinates."""
    return (width - 1) / 2.0, (height - 1) / 2.0


def placement_matrix(pose: Pose, width: int, height: int) -> NDArray[np.float64]:
    """The 2x3 affine matrix that maps template pixel coordinates to image coordinates.

    Example:
        >>> m = placement_matrix(Pose(100.0, 50.0, 0.0, 1.0), 11, 11)
        >>> (m @ [5.0, 5.0, 1.0]).tolist()
        [100.0, 50.0]
    """
    tx, ty = template_centre(width, height)
    matrix = cv2.getRotationMatrix2D((tx, ty), pose.angle, pose.scale).astype(np.float64)
    matrix[0, 2] += pose.cx - tx
    matrix[1, 2] += pose.cy - ty
    return matrix


def pose_corners(pose: Pose, width: int, height: int) -> NDArray[np.float64]:
    """The four image-space corners of the placed template's outer pixel edges, shape (4, 2)."""
    corners = np.array(
        [[-0.5, -0.5, 1], [width - 0.5, -0.5, 1], [width - 0.5, height - 0.5, 1], [-0.5, height - 0.5, 1]]
    )
    return corners @ placement_matrix(pose, width, height).T


def pose_box(pose: Pose, width: int, height: int) -> tuple[float, float, float, float]:
    """The axis-aligned box ``(x, y, w, h)`` around a placed template, in image pixel-edge coordinates."""
    corners = pose_corners(pose, width, height)
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    return float(x0 + 0.5), float(y0 + 0.5), float(x1 - x0), float(y1 - y0)


def pose_of_box(box: Sequence[float], angle: float, scale: float) -> Pose:
    """The pose whose :func:`pose_box` is ``box`` (the box's centre, back in pixel-centre coordinates):
    how a verdict's instance is placed again."""
    x, y, w, h = box
    return Pose(x + w / 2 - 0.5, y + h / 2 - 0.5, angle, scale)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes; 0 when either is empty."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


def nms(boxes: Sequence[Sequence[float]], scores: Sequence[float], iou_limit: float) -> list[int]:
    """Greedy non-maximum suppression.

    Returns the indices of the kept boxes, best score first. No two kept boxes overlap with an IoU above
    ``iou_limit``. Ties in score keep the lower index first, so the result is deterministic.
    """
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= iou_limit for k in kept):
            kept.append(i)
    return kept


def inscribed_fraction(width: int, height: int, max_angle: float) -> float:
    """The largest factor ``k`` such that a centred ``k*width x k*height`` box fits inside the template
    rotated by any angle up to ``max_angle`` degrees."""
    theta = math.radians(min(abs(max_angle), 45.0))
    c, s = math.cos(theta), math.sin(theta)
    return min(width / (width * c + height * s), height / (width * s + height * c))


def crop_at_pose(image: np.ndarray, pose: Pose, width: int, height: int) -> np.ndarray:
    """Cut the aligned ``width x height`` crop of an instance, rotated and scaled back to the template frame.

    Pixels outside the image are black (:func:`inside_at_pose` tells which). Bilinear interpolation keeps
    sub-pixel alignment.
    """
    matrix = placement_matrix(pose, width, height)
    return cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def inside_at_pose(shape: tuple[int, ...], pose: Pose, width: int, height: int) -> NDArray[np.bool_]:
    """Which pixels of the aligned crop of :func:`crop_at_pose` come wholly from inside an image of
    ``shape`` (all four bilinear neighbours in it); the others hold the black fill.

    Example:
        >>> inside = inside_at_pose((100, 100), Pose(2.0, 50.0, 0.0, 1.0), 11, 11)
        >>> inside.all(axis=0).tolist()
        [False, False, False, True, True, True, True, True, True, True, True]
    """
    ones = np.full(shape[:2], 255, np.uint8)
    warped = cv2.warpAffine(
        ones,
        placement_matrix(pose, width, height),
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return np.asarray(warped == 255)
