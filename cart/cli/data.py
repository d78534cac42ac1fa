"""`cart data`: prepare recipes, list and fetch sources, inspect prepared data (parsing and dispatch only)."""
from __future__ import annotations

import json

from cart.cli.common import positive_float, positive_int


def register(sub) -> None:
    p = sub.add_parser("data", help="fetch corpora, train tokenizers, pack token files",
                       description="Data: sources → cleaned documents → tokenizer → packed train/validation token files.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    def root_arg(q):
        q.add_argument("--data-dir", default=None, help="data root (default: $CART_DATA_DIR or ./data)")

    q = dsub.add_parser("prepare", help="prepare a recipe: smoke, cpu, paper or a .toml path (docs/recipes.md)",
                        description="Prepare a recipe. A killed preparation resumes where it stopped when run again. "
                                    "Hub datasets come from the Hugging Face hub, or from $CART_HUB_MIRROR "
                                    "(<mirror>/<owner>/<name>/<files>) when it is set.")
    q.add_argument("recipe")
    root_arg(q)
    q.add_argument("--workers", type=positive_int, default=None, help="tokenizer processes (default 1: one process, the backend's threads on every core)")
    q.add_argument("--force", action="store_true", help="rebuild from scratch, even if up to date or half done")
    q.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars in tokens on stderr (default: when stderr is a terminal)")
    q.add_argument("--no-progress", dest="progress", action="store_false")
    q.set_defaults(func=_prepare)

    q = dsub.add_parser("sources", help="list the source registry, tokenizers and recipes")
    root_arg(q)
    q.set_defaults(func=_sources)

    q = dsub.add_parser("info", help="summary of a prepared folder's manifest")
    q.add_argument("dir", help="a prepared folder (or its manifest.json), or a recipe name under the data root")
    root_arg(q)
    q.add_argument("--verify", action="store_true", help="re-hash every file against the manifest")
    q.add_argument("--json", action="store_true", help="print the manifest itself")
    q.set_defaults(func=_info)

    q = dsub.add_parser("fetch", help="download sources into the cache (llama2 / gpt2: the tokenizers)")
    q.add_argument("source", nargs="+", help="source names, 'llama2', 'gpt2', or 'all' (every registry source); "
                                             "a hub source downloads every file it selects and keeps them")
    root_arg(q)
    q.set_defaults(func=_fetch)

    q = dsub.add_parser("bench", help="tokenize-and-pack throughput (MB/s) on a recipe's training text")
    q.add_argument("recipe", nargs="?", default="cpu")
    root_arg(q)
    q.add_argument("--workers", type=positive_int, default=None)
    q.add_argument("--max-mb", type=positive_float, default=None, help="stop after this much text")
    q.set_defaults(func=_bench)



def _prepare(args) -> int:
    from cart.data import prepare
    prepare(args.recipe, args.data_dir, workers=args.workers, force=args.force, progress=args.progress)
    return 0


def _sources(args) -> int:
    from cart.data import SOURCES, TOKENIZER_ARTIFACTS, data_root, list_recipes
    from cart.data.fetch import cached_artifact
    from cart.data.sources import RegistrySource
    root = data_root(args.data_dir)
    print(f"{'source':<13} {'kind':<9} {'size':>8}  {'cached':<6}  description / how it is fetched")
    for s in SOURCES.values():
        if isinstance(s, RegistrySource):
            cached = "yes" if cached_artifact(s.artifact, root, verify=False) else "no"
            print(f"{s.name:<13} {s.kind:<9} {s.size:>8}  {cached:<6}  {s.description}\n{'':<42}{s.artifact.display()}  [{s.licence}]")
        else:
            print(f"{s.name:<13} {s.kind:<9} {'':>8}  {'':<6}  {s.description}: {s.dataset} {s.data_files[0]} "
                  f"(the Hugging Face hub, or $CART_HUB_MIRROR)")
    print("\ntokenizers: llama2 (Llama-2 32k, rebuilt from " + TOKENIZER_ARTIFACTS["llama2"].display() + "), gpt2 (from "
          + TOKENIZER_ARTIFACTS["gpt2"].display() + "), or any tokenizer.json / .model file")
    print("recipes: " + ", ".join(list_recipes()) + f"   (data root: {root})")
    return 0


def _info(args) -> int:
    from pathlib import Path

    from cart.data import Manifest, data_root
    path = Path(args.dir)
    if not path.exists() and (data_root(args.data_dir) / args.dir).exists():
        path = data_root(args.data_dir) / args.dir
    m = Manifest.load(path)
    if args.json:
        print(json.dumps(m.data, indent=2, ensure_ascii=False))
    else:
        print(m.summary())
    if args.verify:
        m.verify()
        print("verified: every file matches its sha256")
    return 0


def _fetch(args) -> int:
    from cart.data import SOURCES, fetch_source
    from cart.data.sources import RegistrySource
    names = [n for n, s in SOURCES.items() if isinstance(s, RegistrySource)] if args.source == ["all"] else args.source
    for name in names:
        fetch_source(name, args.data_dir)
    return 0


def _bench(args) -> int:
    from cart.data import bench_tokenize
    r = bench_tokenize(args.recipe, args.data_dir, workers=args.workers, max_mb=args.max_mb)
    print(f"tokenize+pack ({r['tokenizer']}, {r['workers']} workers): {r['bytes'] / 1e6:.1f} MB in {r['seconds']:.2f} s = "
          f"{r['mb_per_s']:.2f} MB/s, {r['tokens_per_s'] / 1e6:.2f} M tokens/s")
    return 0
