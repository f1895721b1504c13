"""`classify-image` and `refer`: regions of ordinary images."""
from __future__ import annotations

import logging

from ..errors import InputError
from .options import (image_model_args, load_model, predictions, read_labels, subcommand, top_k_type)

log = logging.getLogger("pointfalip")
# `visual_prompts.PROMPTS`, named here so that --help imports no torch (a test keeps the two equal)
PROMPT_CHOICES = ("falip", "circle", "blur", "crop", "shade", "none")

def _classify_image_args(p):
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--labels", required=True, help="comma-separated names")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--box", help="x0,y0,x1,y1 in pixels")
    g.add_argument("--mask", help="region mask image, same size as IMAGE (non-zero = region)")
    p.add_argument("--prompt", choices=PROMPT_CHOICES,
                   help="how the region is shown to the model (default: falip with --box or --mask; without a region "
                        "the whole image, none)")
    p.add_argument("--top-k", type=top_k_type, default=5, help="labels listed")
    image_model_args(p)


def print_predictions(result: dict) -> None:
    print(result["file"] + (f"  \"{result['caption']}\"" if "caption" in result else ""))
    for p in result["predictions"]:
        print(f"  {p['score']:7.2%}  {p['label']}")


@subcommand("classify-image", "which label fits a region of an image", _classify_image_args, print_predictions)
def run_classify_image(args) -> dict:
    from ..foveal import check_box, parse_box
    from ..images import load_image, load_mask
    from ..regions import classify_region

    labels, _ = read_labels(args)
    image = load_image(args.image)
    box = parse_box(args.box) if args.box else None
    mask = load_mask(args.mask, image.size) if args.mask else None
    if box is not None:
        check_box(box, image.width, image.height)
    region = box is not None or mask is not None
    if args.prompt not in (None, "none") and not region:
        raise InputError(f"--prompt {args.prompt} shows a region: give it with --box x0,y0,x1,y1 or --mask M.png "
                         "(or drop --prompt to classify the whole image)")
    prompt = args.prompt or ("falip" if region else "none")
    model = load_model(args)
    preds = classify_region(model, image, labels, box=box, mask=mask, prompt=prompt, top_k=args.top_k)
    return {"file": str(args.image), "prompt": prompt, "predictions": predictions(preds)}


def _refer_args(p):
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--boxes", required=True, help="'x0,y0,x1,y1;x0,y0,x1,y1;...'")
    p.add_argument("--caption", required=True)
    p.add_argument("--prompt", default="falip", choices=PROMPT_CHOICES, help="how each box is shown to the model")
    image_model_args(p)


@subcommand("refer", "rank candidate boxes for a referring expression", _refer_args, print_predictions)
def run_refer(args) -> dict:
    from ..foveal import check_box, parse_box
    from ..images import load_image
    from ..regions import rank_boxes

    image = load_image(args.image)
    boxes = [parse_box(b) for b in args.boxes.split(";") if b.strip()]
    if not boxes:
        raise InputError("no candidate boxes: give --boxes 'x0,y0,x1,y1;...'")
    for b in boxes:
        check_box(b, image.width, image.height)
    model = load_model(args)
    preds = rank_boxes(model, image, boxes, args.caption, prompt=args.prompt)
    return {"file": str(args.image), "caption": args.caption, "predictions": predictions(preds)}
