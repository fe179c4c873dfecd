"""Cross-validation study of the training recipe, on a GPU: Keras 3 on JAX, no TensorFlow.

The recipe of classification.py (frozen lower blocks run once per augmented view and cached, then
the head, then blocks 6-16 fine-tuned on the cached activations) re-implemented with a jitted
training step, so that a dozen variants x 3 folds run in minutes instead of days on 2 CPU cores.
It chose the settings in classification.py; it is not part of the product. Scores: stratified
5-fold split of the training images, folds 0-2 (300 validation images each, 1200 to train on);
the public test is printed for reporting, never used to choose.

Differences from classification.py: the augmented views are made with Pillow (same kinds and
ranges as the Keras layers, which are slow under JAX), the optimiser is a hand-written Adam/AdamW
with the same settings, and the head phase's learning rate is the same for every variant.

    python cv_study.py DATA_DIR OUT_DIR            # DATA_DIR in the checker's layout
    BN_TRAINING=1 python cv_study.py ...           # the backbone's BatchNormalization in training mode
    CONFIGS='[{"name": "ft32", "ft_epochs": 32}]' python cv_study.py ...
    python cv_study.py DATA_DIR OUT_DIR --quick    # smoke test on 300 images, runs on a CPU too

Needs KERAS_BACKEND=jax and KERAS_HOME holding the MobileNetV2 no-top weights. Writes
OUT_DIR/study.log (one JSON line per fold and a SUMMARY line per variant) and OUT_DIR/probs.npz.
"""

import csv
import json
import multiprocessing
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras import layers
from PIL import Image

DATA, OUT = sys.argv[1], sys.argv[2]
QUICK = "--quick" in sys.argv
SIZE = 224
SPLIT = "block_5_add"
POOL_VIEWS = 2 if QUICK else int(os.environ.get("POOL_VIEWS", 8))
FOLDS = 5
USE_FOLDS = [0] if QUICK else [0, 1, 2]
BATCH = 32
LOG = open(os.path.join(OUT, "study.log"), "a")


def log(*parts):
    text = " ".join(str(p) for p in parts)
    print(text, flush=True)
    LOG.write(text + "\n")
    LOG.flush()


def read_gt(path):
    with open(path) as f:
        rows = list(csv.reader(f))[1:]
    return {r[0]: int(r[1]) for r in rows}


def load(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------- augmentation on host (PIL), mirrors the Keras layers of classification.py ----------
PAD = 48


def view_affine(args):
    """flip, zoom in (crop side 0.7-1), shift +-10%, rotate +-0.03 turns, contrast 0.8-1.2; reflect fill."""
    image, seed = args
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="reflect")
    pil = Image.fromarray(padded)
    if rng.random() < 0.5:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    zoom = rng.uniform(0.7, 1.0)
    tx, ty = rng.uniform(-0.1, 0.1, 2) * np.array([w, h])
    angle = rng.uniform(-0.03, 0.03) * 2 * np.pi
    # output pixel (u,v) in [0,SIZE) -> source (x,y) in the padded image
    s = zoom * w / SIZE
    c, si = np.cos(angle), np.sin(angle)
    cx, cy = PAD + w / 2 + tx, PAD + h / 2 + ty
    a, b = s * c, -s * si
    d, e = s * si, s * c
    x0 = cx - (a * SIZE / 2 + b * SIZE / 2)
    y0 = cy - (d * SIZE / 2 + e * SIZE / 2)
    out = pil.transform((SIZE, SIZE), Image.AFFINE, (a, b, x0, d, e, y0), resample=Image.BILINEAR)
    arr = np.asarray(out).astype(np.float32)
    factor = rng.uniform(0.8, 1.2)
    mean = arr.mean(axis=(0, 1), keepdims=True)
    return np.clip((arr - mean) * factor + mean, 0, 255).astype(np.uint8)


def view_rrc(args):
    """random resized crop (area 0.25-1, ratio 3/4-4/3) + flip."""
    image, seed = args
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    for _ in range(10):
        area = rng.uniform(0.25, 1.0) * h * w
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if cw <= w and ch <= h:
            break
    else:
        cw, ch = w, h
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    pil = Image.fromarray(image).crop((x, y, x + cw, y + ch)).resize((SIZE, SIZE), Image.BILINEAR)
    if rng.random() < 0.5:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(pil)


def plain(image):
    return np.asarray(Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR))


def center_crop(image, fraction=0.85):
    h, w = image.shape[:2]
    cw, ch = int(w * fraction), int(h * fraction)
    x, y = (w - cw) // 2, (h - ch) // 2
    return np.asarray(Image.fromarray(image).crop((x, y, x + cw, y + ch)).resize((SIZE, SIZE), Image.BILINEAR))


# ---------- model ----------
def build_backbone():
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False, weights="imagenet")
    pixels = keras.Input((SIZE, SIZE, 3))
    scaled = layers.Rescaling(1 / 127.5, offset=-1)(pixels)
    split = backbone.get_layer(SPLIT).output
    lower_core = keras.Model(backbone.inputs, split)
    lower = keras.Model(pixels, lower_core(scaled))
    upper = keras.Model(split, backbone.output)
    return lower, upper


def make_head(num_classes, seed, hidden=256, dropout=0.3):
    keras.utils.set_random_seed(seed)
    head = keras.Sequential(
        [
            layers.GlobalAveragePooling2D(),
            layers.Dense(hidden, use_bias=False),
            layers.BatchNormalization(),
            layers.Activation("relu"),
            layers.Dropout(dropout),
            layers.Dense(num_classes, activation="softmax"),
        ]
    )
    head.build((None, 7, 7, 1280))
    return head


def main():
    t0 = time.time()
    # fork the workers before JAX starts its threads and the GPU runtime
    pool = multiprocessing.Pool(min(16, os.cpu_count()))
    gt = read_gt(os.path.join(DATA, "00_input/train/gt.csv"))
    names = sorted(gt)
    labels = np.array([gt[n] for n in names])
    test_gt = read_gt(os.path.join(DATA, "00_gt/gt.csv"))
    test_names = sorted(test_gt)
    test_labels = np.array([test_gt[n] for n in test_names])
    if QUICK:
        keep = np.concatenate([np.flatnonzero(labels == c)[:6] for c in range(50)])
        names, labels = [names[i] for i in keep], labels[keep]
        test_names, test_labels = test_names[:100], test_labels[:100]
    images = [load(os.path.join(DATA, "00_input/train/images", n)) for n in names]
    test_images = [load(os.path.join(DATA, "00_input/test/images", n)) for n in test_names]
    num_classes = 50
    log("loaded", len(images), len(test_images), f"{time.time()-t0:.1f}s", jax.devices())

    lower, upper = build_backbone()
    if not os.environ.get("BN_TRAINING"):
        # As in classification.py: Keras 3 passes the outer training=True down through nested
        # functional models, so only trainable=False pins BatchNormalization to inference mode.
        for layer in upper.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    shape = lower.output_shape[1:]

    def run_lower(batch_images):
        return lower.predict(np.stack(batch_images), batch_size=256, verbose=0).astype(np.float16)

    caches = {}
    augs = [("affine", view_affine)] + ([("rrc", view_rrc)] if os.environ.get("RRC") else [])
    for aug_name, fn in augs:
        cache = np.zeros((POOL_VIEWS, len(images)) + shape, np.float16)
        cache[0] = run_lower([plain(im) for im in images])
        for v in range(1, POOL_VIEWS):
            views = pool.map(fn, [(im, 1000003 * v + i + (0 if aug_name == "affine" else 77)) for i, im in enumerate(images)])
            cache[v] = run_lower(views)
        caches[aug_name] = cache
        log("cached", aug_name, cache.shape, f"{time.time()-t0:.1f}s")
    flipped = run_lower([plain(im)[:, ::-1] for im in images])
    cropped = run_lower([center_crop(im) for im in images])
    test_sets = {
        "plain": run_lower([plain(im) for im in test_images]),
        "flip": run_lower([plain(im)[:, ::-1] for im in test_images]),
        "crop": run_lower([center_crop(im) for im in test_images]),
    }
    log("eval views cached", f"{time.time()-t0:.1f}s")

    features = keras.Input(shape)
    head = make_head(num_classes, 0)
    trainer = keras.Model(features, head(upper(features)))
    head_vars = set(id(v) for v in head.trainable_variables)
    is_head = [id(v) in head_vars for v in trainer.trainable_variables]
    init_upper = [v.value for v in upper.weights]

    @jax.jit
    def train_step(tv, ntv, m, s, x, y, lr_head, lr_upper, wd, step):
        def loss_fn(tv):
            pred, new_ntv = trainer.stateless_call(tv, ntv, x, training=True)
            return jnp.mean(keras.losses.categorical_crossentropy(y, pred, label_smoothing=0.1)), new_ntv

        (loss, new_ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv)
        t = step + 1.0
        new_tv, new_m, new_s = [], [], []
        for var, g, mi, si, h in zip(tv, grads, m, s, is_head):
            lr = lr_head if h else lr_upper
            mi = 0.9 * mi + 0.1 * g
            si = 0.999 * si + 0.001 * g * g
            update = (mi / (1 - 0.9**t)) / (jnp.sqrt(si / (1 - 0.999**t)) + 1e-7)
            new_tv.append(var - lr * update - lr * wd * var)
            new_m.append(mi)
            new_s.append(si)
        return new_tv, new_ntv, new_m, new_s, loss

    @jax.jit
    def predict_step(tv, ntv, x):
        pred, _ = trainer.stateless_call(tv, ntv, x, training=False)
        return pred

    def predict(tv, ntv, x):
        return np.concatenate([np.asarray(predict_step(tv, ntv, x[i : i + 250].astype(np.float32))) for i in range(0, len(x), 250)])

    def run(cfg, train_idx, val_idx, seed):
        rng = np.random.default_rng(seed)
        for var, value in zip(upper.weights, init_upper):
            var.assign(value)
        new_head = make_head(num_classes, seed, dropout=cfg.get("dropout", 0.3))
        head.set_weights(new_head.get_weights())
        tv = [v.value for v in trainer.trainable_variables]
        ntv = [v.value for v in trainer.non_trainable_variables]
        cache = caches[cfg.get("aug", "affine")]
        views = cfg.get("views", 8)
        onehot = np.eye(num_classes, dtype=np.float32)
        val_x = cache[0][val_idx]
        val_y = labels[val_idx]
        history = []
        best = (-1, None)
        phases = [("head", cfg.get("head_epochs", 4)), ("ft", cfg.get("ft_epochs", 16))]
        for phase, epochs in phases:
            m = [jnp.zeros_like(v) for v in tv]
            s = [jnp.zeros_like(v) for v in tv]
            steps_per_epoch = int(np.ceil(len(train_idx) / BATCH))
            total = epochs * steps_per_epoch
            step = 0
            for epoch in range(epochs):
                order = rng.permutation(train_idx)
                view_of = rng.integers(views, size=len(labels))
                for b in range(steps_per_epoch):
                    idx = order[b * BATCH : (b + 1) * BATCH]
                    x = cache[view_of[idx], idx].astype(np.float32)
                    y = onehot[labels[idx]]
                    if cfg.get("cutmix", 0) and rng.random() < cfg["cutmix"]:
                        perm = rng.permutation(len(idx))
                        lam = rng.beta(1.0, 1.0)
                        H, W = x.shape[1:3]
                        ch, cw = int(H * np.sqrt(1 - lam)), int(W * np.sqrt(1 - lam))
                        cy, cx = rng.integers(H), rng.integers(W)
                        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, H)
                        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, W)
                        x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
                        area = (y1 - y0) * (x1 - x0) / (H * W)
                        y = (1 - area) * y + area * y[perm]
                    if phase == "head":
                        lr_head, lr_upper, wd = cfg.get("head_lr", 1e-3), 0.0, 0.0
                    else:
                        base = cfg.get("lr", 1e-4)
                        warm = cfg.get("warmup", 0) * steps_per_epoch
                        if step < warm:
                            lr = base * (step + 1) / warm
                        else:
                            lr = base * 0.5 * (1 + np.cos(np.pi * (step - warm) / max(total - warm, 1)))
                        lr_head, lr_upper, wd = lr * cfg.get("head_mult", 1.0), lr, cfg.get("wd", 1e-4)
                    tv, ntv, m, s, loss = train_step(tv, ntv, m, s, x, y, lr_head, lr_upper, wd, float(step))
                    step += 1
                acc = float((predict(tv, ntv, val_x).argmax(1) == val_y).mean())
                history.append(round(acc, 4))
                if phase == "ft" and acc >= best[0]:
                    best = (acc, ([np.asarray(v) for v in tv], [np.asarray(v) for v in ntv]))
        last = (tv, ntv)
        chosen = best[1] if cfg.get("select", "best") == "best" else last
        result = {"history": history, "val_best": best[0], "val_last": history[-1]}
        probs = {}
        for key, source in (("val_plain", cache[0][val_idx]), ("val_flip", flipped[val_idx]), ("val_crop", cropped[val_idx])):
            probs[key] = predict(*chosen, source)
        for key, source in test_sets.items():
            probs["test_" + key] = predict(*chosen, source)
        for key in ("plain", "flip", "crop"):
            result["val_" + key] = float((probs["val_" + key].argmax(1) == val_y).mean())
            result["test_" + key] = float((probs["test_" + key].argmax(1) == test_labels).mean())
        result["val_tta_flip"] = float(((probs["val_plain"] + probs["val_flip"]).argmax(1) == val_y).mean())
        result["test_tta_flip"] = float(((probs["test_plain"] + probs["test_flip"]).argmax(1) == test_labels).mean())
        return result, probs

    # stratified folds
    fold_rng = np.random.default_rng(0)
    fold_of = np.zeros(len(labels), int)
    for c in np.unique(labels):
        members = fold_rng.permutation(np.flatnonzero(labels == c))
        fold_of[members] = np.arange(len(members)) % FOLDS

    # The defaults are the second study in README.md; the first one (BN_TRAINING=1 POOL_VIEWS=16
    # RRC=1) ran base_v8, base_v8_s2, cutmix 0.5, views 16, ft_epochs 32, aug rrc and lr 3e-4.
    configs = json.loads(os.environ.get("CONFIGS", "[]")) or [
        {"name": "base_v8"},
        {"name": "ft32", "ft_epochs": 32},
        {"name": "base_v8_s2", "seed": 2},
        {"name": "ft32_s2", "ft_epochs": 32, "seed": 2},
    ]
    if QUICK:
        configs = [{"name": "quick", "views": 2, "head_epochs": 1, "ft_epochs": 1, "cutmix": 0.5}]
    all_probs = {}
    for cfg in configs:
        rows = []
        for fold in USE_FOLDS:
            train_idx = np.flatnonzero(fold_of != fold)
            val_idx = np.flatnonzero(fold_of == fold)
            t1 = time.time()
            result, probs = run(cfg, train_idx, val_idx, cfg.get("seed", 1) * 100 + fold)
            result["secs"] = round(time.time() - t1, 1)
            rows.append(result)
            all_probs[(cfg["name"], fold)] = probs
            log(cfg["name"], "fold", fold, json.dumps(result))
        mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k != "history"}
        log("SUMMARY", cfg["name"], json.dumps(mean), f"t={time.time()-t0:.0f}s")
        np.savez_compressed(
            os.path.join(OUT, "probs.npz"),
            **{f"{n}__{f}__{k}": v for (n, f), p in all_probs.items() for k, v in p.items()},
        )
    # ensembles of seeds
    for members in (["base_v8", "base_v8_s2"], ["ft32", "ft32_s2"]):
        if all((m, USE_FOLDS[0]) in all_probs for m in members):
            accs_val, accs_test = [], []
            for fold in USE_FOLDS:
                val_idx = np.flatnonzero(fold_of == fold)
                pv = sum(all_probs[(m, fold)]["val_plain"] for m in members)
                pt = sum(all_probs[(m, fold)]["test_plain"] for m in members)
                accs_val.append((pv.argmax(1) == labels[val_idx]).mean())
                accs_test.append((pt.argmax(1) == test_labels).mean())
            log("ENSEMBLE", "+".join(members), f"val {np.mean(accs_val):.4f} test {np.mean(accs_test):.4f}")
    log("done", f"{time.time()-t0:.0f}s")


if __name__ == "__main__":
    main()
