"""`cart export hf` and `cart import hf`: a checkpoint as a Hugging Face directory, and back
(parsing and dispatch; the work is in cart.export)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint for another ecosystem (hf: a transformers model directory)",
                       description="See `cart export hf -h`.")
    esub = p.add_subparsers(dest="export_command", metavar="FORMAT")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
    h = esub.add_parser("hf", help="a directory that transformers loads (AutoModelForCausalLM with trust_remote_code, "
                                   "AutoTokenizer), with a generated model card",
                        description="Example: cart export hf runs/main exports/cart-main  "
                                    "(then, with hub access: hf upload USER/cart-main exports/cart-main)")
    h.add_argument("checkpoint", help="run dir (its newest good checkpoint), checkpoint dir or model.safetensors")
    h.add_argument("out_dir", help="the directory to write (must not exist or be empty, unless --force)")
    h.add_argument("--tokenizer", default=None, help="tokenizer path or name (default: the run's data manifest)")
    h.add_argument("--data", default=None, help="prepared data dir with manifest.json (default: the run's train_config.json)")
    h.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists (only after the new one is complete)")
    h.add_argument("--no-verify", action="store_true",
                   help="do not load the result with transformers to compare its logits and tokens with cart's")
    h.set_defaults(func=run_export)

    i = sub.add_parser("import", help="import a model exported by `cart export` back into a cart run directory",
                       description="See `cart import hf -h`.")
    isub = i.add_subparsers(dest="import_command", metavar="FORMAT")
    i.set_defaults(func=lambda a: (i.print_help(), 2)[1])
    g = isub.add_parser("hf", help="a `cart export hf` directory (or its re-save by transformers) -> RUN_DIR/checkpoints/step_N",
                        description="Example: cart import hf exports/cart-main runs/cart-main && cart generate runs/cart-main --prompt Hi")
    g.add_argument("src_dir", help="the exported directory")
    g.add_argument("run_dir", help="the run directory to write (must not exist or be empty, unless --force)")
    g.add_argument("--force", action="store_true", help="replace RUN_DIR if it exists (only after the new one is complete)")
    g.set_defaults(func=run_import)


def run_export(args) -> int:
    from cart.export import export_hf

    export_hf(args.checkpoint, args.out_dir, tokenizer=args.tokenizer, data=args.data, force=args.force,
              verify=not args.no_verify)
    return 0


def run_import(args) -> int:
    from cart.export import import_hf

    import_hf(args.src_dir, args.run_dir, force=args.force)
    return 0
