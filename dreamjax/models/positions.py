"""Host-side (numpy) layout helpers: LLM position ids (spec §1.6) and ViT patch layout (spec §1.3).

These depend on data-dependent sizes (image grids, where the images sit in the text), so they run on the
host before the jitted forward; the model itself only sees fixed-shape integer arrays.
"""

from __future__ import annotations

import numpy as np


def text_position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """[3, B, S] positions 0, 1, 2, … over the valid tokens of each row; padding keeps 1 (as the reference)."""
    mask = np.asarray(attention_mask).astype(bool)
    pos = np.where(mask, np.cumsum(mask, axis=-1) - 1, 1)
    return np.broadcast_to(pos[None], (3,) + pos.shape).astype(np.int32)


def get_rope_index(input_ids: np.ndarray, image_grid_thw: np.ndarray | None = None,
                   video_grid_thw: np.ndarray | None = None, attention_mask: np.ndarray | None = None, *,
                   image_token_id: int, video_token_id: int, vision_start_token_id: int,
                   spatial_merge_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The reference's Qwen2-VL ``get_rope_index`` (transformers 4.51 logic, spec §1.6).

    Images/videos are found through ``<|vision_start|>`` tokens: the token right after each one decides image
    vs video. Text spans get 1-D positions continuing from the previous maximum + 1; a vision block of LLM
    grid (t, h/m, w/m) gets (t, h, w) indices offset by the running start. Padding keeps position 1.

    The Dream-VL chat template never emits ``<|vision_start|>``, so for Dream-VL this degenerates to
    ``text_position_ids`` (plain 1-D positions, image tokens numbered like text); kept for checkpoints whose
    templates do emit it.

    Returns (position_ids [3, B, S] int32, rope_deltas [B, 1] int32 = max position + 1 − valid length).
    """
    input_ids = np.asarray(input_ids)
    b, s = input_ids.shape
    mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    images = iter(np.asarray(image_grid_thw).reshape(-1, 3)) if image_grid_thw is not None else iter(())
    videos = iter(np.asarray(video_grid_thw).reshape(-1, 3)) if video_grid_thw is not None else iter(())
    position_ids = np.ones((3, b, s), np.int64)
    deltas = np.zeros((b, 1), np.int64)
    m = spatial_merge_size
    for i in range(b):
        ids = input_ids[i][mask[i]]
        starts = np.flatnonzero(ids == vision_start_token_id)
        kinds = ids[starts[starts + 1 < len(ids)] + 1]
        n_img, n_vid = int((kinds == image_token_id).sum()), int((kinds == video_token_id).sum())
        chunks, st = [], 0
        for _ in range(n_img + n_vid):
            nxt_img = _find(ids, image_token_id, st) if n_img else len(ids) + 1
            nxt_vid = _find(ids, video_token_id, st) if n_vid else len(ids) + 1
            if nxt_img < nxt_vid:
                (t, h, w), end = _next_grid(images, "image"), nxt_img
                n_img -= 1
            else:
                (t, h, w), end = _next_grid(videos, "video"), nxt_vid
                n_vid -= 1
            gt, gh, gw = int(t), int(h) // m, int(w) // m
            base = chunks[-1].max() + 1 if chunks else 0
            text_len = end - st
            chunks.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + base)
            tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
            chunks.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + text_len + base)
            st = end + gt * gh * gw
        if st < len(ids):
            base = chunks[-1].max() + 1 if chunks else 0
            chunks.append(np.broadcast_to(np.arange(len(ids) - st), (3, len(ids) - st)) + base)
        pos = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), np.int64)
        position_ids[:, i, mask[i]] = pos
        deltas[i, 0] = (pos.max() + 1 if pos.size else 0) - len(ids)
    return position_ids.astype(np.int32), deltas.astype(np.int32)


def _find(ids: np.ndarray, token: int, start: int) -> int:
    hits = np.flatnonzero(ids[start:] == token)
    return int(hits[0]) + start if len(hits) else len(ids) + 1


def _next_grid(grids, kind: str):
    try:
        return next(grids)
    except StopIteration:
        raise ValueError(f"more <|vision_start|> {kind} blocks in input_ids than {kind}_grid_thw rows") from None


def vision_patch_layout(grid_thw: np.ndarray, spatial_merge_size: int = 2,
                        num_patches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch 2-D rotary coordinates and attention segment ids for the ViT.

    For each image/video with grid (t, h, w): (row, col) of each patch in merge-window order (reshape
    (h/m, m, w/m, m) → (0, 2, 1, 3)), repeated t times; the segment id is 1 + the index of its (image,
    temporal slice), so attention stays inside one slice (the reference's ``cu_seqlens``).

    ``num_patches`` pads to a static budget (a multiple of m²): padded patches get position 0 and segment 0
    (attend to nothing, produce 0). Returns (positions [N, 2] int32, segment_ids [N] int32).
    """
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    m = spatial_merge_size
    pos, seg, slice_id = [], [], 0
    for t, h, w in grid_thw:
        if h % m or w % m:
            raise ValueError(f"image grid (t={t}, h={h}, w={w}) is not divisible by spatial_merge_size={m}")
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        order = lambda a: a.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()  # noqa: E731
        hw = np.stack([order(hh), order(ww)], axis=-1)
        for _ in range(t):
            slice_id += 1
            pos.append(hw)
            seg.append(np.full(h * w, slice_id))
    positions = np.concatenate(pos) if pos else np.zeros((0, 2), np.int64)
    segments = np.concatenate(seg) if seg else np.zeros((0,), np.int64)
    n = len(segments)
    if num_patches is not None:
        if num_patches < n:
            raise ValueError(f"images need {n} patches but the patch budget is {num_patches}")
        if num_patches % (m * m):
            raise ValueError(f"patch budget {num_patches} must be a multiple of spatial_merge_size²={m * m}")
        positions = np.concatenate([positions, np.zeros((num_patches - n, 2), np.int64)])
        segments = np.concatenate([segments, np.zeros(num_patches - n, np.int64)])
    return positions.astype(np.int32), segments.astype(np.int32)


def vision_patch_rows(grid_thw: np.ndarray, row_len: int | None = None, num_rows: int | None = None,
                      spatial_merge_size: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack image slices (one per image and temporal slice) into rows of ``row_len`` patches for the ViT.

    First fit in order: a slice starts a new row when it does not fit in the current one; no slice crosses
    a row, so attending within rows is the reference's per-slice attention at a fraction of the cost.
    ``row_len`` defaults to the largest slice; ``num_rows`` pads to a static budget.

    Returns (gather [R·L] int32: index into the flat patch rows, −1 for padding; positions [R, L, 2];
    segment_ids [R, L], 0 for padding).
    """
    m2 = spatial_merge_size**2
    pos, seg = vision_patch_layout(grid_thw, spatial_merge_size)
    starts = np.flatnonzero(np.diff(seg, prepend=-1)) if len(seg) else np.zeros(0, np.int64)
    ends = np.append(starts[1:], len(seg)).astype(np.int64)
    longest = int((ends - starts).max()) if len(starts) else m2
    row_len = longest if row_len is None else row_len
    if row_len % m2 or row_len < longest:
        raise ValueError(f"row_len={row_len} must be a multiple of {m2} and hold the largest image slice "
                         f"({longest} patches)")
    slots, cursor = [], 0
    for a, b in zip(starts, ends):
        if cursor % row_len + (b - a) > row_len:
            cursor += row_len - cursor % row_len
        slots.append((cursor, a, b))
        cursor += b - a
    need = max(1, -(-cursor // row_len))
    rows = need if num_rows is None else num_rows
    if rows < need:
        raise ValueError(f"images need {need} rows of {row_len} patches, but the row budget is {rows}")
    gather = np.full(rows * row_len, -1, np.int64)
    for at, a, b in slots:
        gather[at:at + b - a] = np.arange(a, b)
    ok = gather >= 0
    safe = np.maximum(gather, 0)
    out_pos = np.where(ok[:, None], pos[safe] if len(pos) else 0, 0).reshape(rows, row_len, 2)
    out_seg = np.where(ok, seg[safe] if len(seg) else 0, 0).reshape(rows, row_len)
    return gather.astype(np.int32), out_pos.astype(np.int32), out_seg.astype(np.int32)


def pack_pixel_rows(pixel_values: np.ndarray, gather: np.ndarray, row_len: int) -> np.ndarray:
    """Flat [N, patch_dim] pixel rows → [R, L, patch_dim] by ``gather`` (zeros where it is −1)."""
    pv = np.asarray(pixel_values)
    out = np.where((gather >= 0)[:, None], pv[np.maximum(gather, 0)], 0).astype(pv.dtype)
    return out.reshape(-1, row_len, pv.shape[-1])
