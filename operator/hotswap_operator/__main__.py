"""`python -m hotswap_operator` / `hotswap-operator`: run the kopf operator."""

from __future__ import annotations

import argparse
import logging
import sys

from hotswap_operator import config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    namespaces, _, liveness = config.from_environ()
    parser = argparse.ArgumentParser(prog="hotswap-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        help="namespace to watch (repeatable; default: $HOTSWAP_NAMESPACES, else all)",
    )
    parser.add_argument("--liveness", default=liveness, help="kopf liveness endpoint URL")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.namespaces = tuple(args.namespaces or namespaces)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config.from_environ()  # fail fast on malformed settings, before connecting
    import kopf

    from hotswap_operator import handlers  # registers the handlers

    logging.getLogger("kopf.objects").addFilter(handlers.QuietEventHandlers())
    logging.getLogger(__name__).info(
        "hotswap-operator watching %s; liveness %s; handlers in %s",
        ", ".join(args.namespaces) or "all namespaces",
        args.liveness,
        handlers.__name__,
    )
    kopf.run(
        standalone=True,
        clusterwide=not args.namespaces,
        namespaces=args.namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
