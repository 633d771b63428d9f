"""Command line: `python3 launch.py [flags]` serves the UI; `python3 launch.py generate ...` runs one job.

Both use the same app factory, engine, files and infotext. Flags follow AUTOMATIC1111's
names where it has them (--ckpt-dir, --listen, --port, --no-half-vae, --api).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

SERVER_EPILOG = "Run `python3 launch.py generate --help` for the command-line generator."


def _common(parser: argparse.ArgumentParser) -> None:
    from .paths import PROJECT_ROOT

    group = parser.add_argument_group("models, files and device")
    group.add_argument("--models-dir", type=Path, default=PROJECT_ROOT / "models",
                       help="root of the models folders (Stable-diffusion/, Lora/, VAE/, ...)")
    group.add_argument("--ckpt-dir", type=Path, action="append", default=[],
                       help="extra folder to scan for checkpoints, e.g. an AUTOMATIC1111 models/Stable-diffusion "
                            "(repeatable)")
    group.add_argument("--lora-dir", type=Path, action="append", default=[],
                       help="extra folder to scan for LoRA files (repeatable)")
    group.add_argument("--embeddings-dir", type=Path, action="append", default=[],
                       help="extra folder to scan for textual-inversion embeddings (repeatable)")
    group.add_argument("--outputs-dir", type=Path, default=PROJECT_ROOT / "outputs", help="where images are saved")
    group.add_argument("--data-dir", type=Path, default=PROJECT_ROOT,
                       help="where config.json and the cache folder live")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    group.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                       help="model dtype; auto = fp16 on GPUs, fp32 on CPU")
    group.add_argument("--no-half-vae", action="store_true", help="always decode with the VAE in fp32")
    group.add_argument("--weights", default="auto", choices=("auto", "fp16", "bf16", "fp8", "nf4"),
                       help="how weights are kept: fp16/bf16 set the model dtype (like --precision); fp8 stores "
                            "the denoiser in fp8 (e4m3fn), nf4 its Linear layers in 4 bits (needs bitsandbytes); "
                            "both compute in the model dtype. Written in the "
                            "infotext as Weights; a checkpoint's own storage (Models → Library), then the setting "
                            "weight_storage, win")
    memory = parser.add_argument_group("memory and speed (the setting memory_mode, when not Automatic, wins)")
    memory.add_argument("--medvram", action="store_true",
                        help="model offload: each model (text encoders, UNet, VAE) moves to the GPU only while it runs")
    memory.add_argument("--medvram-sdxl", action="store_true", help="model offload for SDXL checkpoints only")
    memory.add_argument("--lowvram", action="store_true",
                        help="block offload: the UNet's blocks stream through the GPU one at a time (least memory)")
    memory.add_argument("--gpu-weights", type=float, default=0, metavar="MB",
                        help="GPU memory the weights may take, in MB; the automatic memory mode offloads above it, "
                             "and block offload keeps the denoiser's blocks that fit on the GPU")
    memory.add_argument("--fast", action="store_true",
                        help="fast mode: channels_last, fused QKV projections and, on CUDA, torch.compile of the "
                             "denoiser (setting fast_mode)")
    for flag, what in (("--xformers", "xFormers"), ("--opt-sdp-attention", "SDP"),
                       ("--opt-sdp-no-mem-attention", "SDP without the memory-efficient kernel"),
                       ("--opt-split-attention", "SDP (its memory-efficient kernel splits attention)"),
                       ("--opt-split-attention-invokeai", "SDP (as --opt-split-attention)"),
                       ("--opt-split-attention-v1", "SDP (as --opt-split-attention)"),
                       ("--opt-sub-quad-attention", "SDP (as --opt-split-attention)")):
        memory.add_argument(flag, action="store_true",
                            help=f"attention: {what} when the setting cross_attention_optimization is Automatic")
    group.add_argument("--allow-pickle", action="store_true",
                       help="allow .ckpt/.pt/.bin checkpoints (read with a restricted unpickler)")
    group.add_argument("--demo-model", action="store_true",
                       help="write a tiny random-weight checkpoint into models/ to try the app offline")
    group.add_argument("--extensions-dir", type=Path, default=PROJECT_ROOT / "extensions",
                       help="folder of extensions (default: extensions/)")
    group.add_argument("--disable-extensions", action="store_true", help="safe mode: start with no extension loaded")
    group.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def server_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py", description="Easel, a local Stable Diffusion web UI.",
                                     epilog=SERVER_EPILOG)
    _common(parser)
    group = parser.add_argument_group("server")
    group.add_argument("--port", type=int, default=None,
                       help="port to listen on (default 7860; 7861 with --nowebui, as in AUTOMATIC1111)")
    group.add_argument("--listen", action="store_true",
                       help="listen on all interfaces (0.0.0.0) instead of 127.0.0.1; requires --auth")
    group.add_argument("--auth", metavar="USER:PASSWORD[,USER2:PASSWORD2]",
                       help="require one of these logins (HTTP Basic) for every route: UI, API, files, docs")
    group.add_argument("--api-auth", metavar="USER:PASSWORD[,...]",
                       help="AUTOMATIC1111's name; adds logins exactly like --auth (every route is protected)")
    group.add_argument("--insecure", action="store_true", help="allow --listen without --auth")
    api = parser.add_argument_group("API")
    api.add_argument("--api", action="store_true", help="serve AUTOMATIC1111's API at /sdapi/v1 (docs at /docs)")
    api.add_argument("--nowebui", action="store_true", help="serve the API only, without the web UI")
    api.add_argument("--cors-allow-origins", metavar="ORIGIN[,ORIGIN]", default="",
                     help="web origins allowed to call the API from a browser (default: none)")
    api.add_argument("--api-max-body-mb", type=float, default=64,
                     help="largest request body in MiB, API requests and UI uploads alike; larger ones get "
                          "HTTP 413 (default 64)")
    group.add_argument("--enable-insecure-extension-access", action="store_true",
                       help="allow installing extensions from the UI even when listening beyond 127.0.0.1")
    workers = parser.add_argument_group("workers (Ray; see docs/scale-out.md)")
    workers.add_argument("--workers", metavar="DEVICE[,DEVICE]", default="",
                         help="one worker process per device on this machine: cpu,cpu or cuda:0,cuda:1 or auto "
                              "(default: one worker inside the server process)")
    workers.add_argument("--ray-address", metavar="auto|ray://HOST:10001", default=None,
                         help="run jobs on the workers of a Ray cluster started with `ray start`")
    return parser


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py generate", description="Generate images from the command line.")
    _common(parser)
    g = parser.add_argument_group("generation")
    g.add_argument("--model", help="checkpoint name, file name, title or hash (default: the selected one)")
    g.add_argument("--prompt", default="")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--sampler", default="DPM++ 2M", help='sampler name, e.g. "Euler a" or "DPM++ 2M Karras"')
    g.add_argument("--scheduler", default="Automatic", help="schedule type, e.g. Karras (default Automatic)")
    g.add_argument("--cfg-scale", type=float, default=7.0)
    g.add_argument("--seed", type=int, default=-1)
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--height", type=int, default=512)
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--batch-count", type=int, default=1)
    g.add_argument("--out", type=Path, help="save images into this folder (default: outputs/txt2img-images/DATE)")
    return parser


def _precision(args: argparse.Namespace) -> str:
    """--precision, or the compute type --weights names; the two may not disagree."""
    if args.weights in ("fp16", "bf16"):
        if args.precision not in ("auto", args.weights):
            raise ValueError(f"--weights {args.weights} and --precision {args.precision} disagree; give one of them")
        return args.weights
    return args.precision


def _options(args: argparse.Namespace):
    from .app import AppOptions
    from .model_manager.attention_backends import FLAGS, flag_choice
    from .model_manager.memory import MemoryFlags

    memory = MemoryFlags.from_flags(args.lowvram, args.medvram, args.medvram_sdxl, args.gpu_weights)
    attention = flag_choice({name: getattr(args, name) for name in FLAGS})
    return AppOptions(memory=memory, weights=args.weights, fast=args.fast, attention=attention,
                      models_dir=args.models_dir, ckpt_dirs=args.ckpt_dir, lora_dirs=args.lora_dir,
                      embedding_dirs=args.embeddings_dir, outputs_dir=args.outputs_dir,
                      data_dir=args.data_dir, device=args.device, precision=_precision(args),
                      no_half_vae=args.no_half_vae, allow_pickle=args.allow_pickle, demo_model=args.demo_model,
                      extensions_dir=args.extensions_dir, disable_extensions=args.disable_extensions,
                      allow_extension_install=not getattr(args, "listen", False)
                      or getattr(args, "enable_insecure_extension_access", False),
                      output_dir=args.out.resolve() if getattr(args, "out", None) else None,
                      workers=getattr(args, "workers", ""), ray_address=getattr(args, "ray_address", None))


def _setup(args: argparse.Namespace) -> None:
    # Offline first: no library may reach a model hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "diffusers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # on CPUs with AVX-512 BF16, importing bitsandbytes (diffusers does) looks for an optional hub CPU kernel through
    # the `kernels` package and warns on every start without it; it falls back to its own CPU path
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


SECRET_FLAGS = ("auth", "api_auth")


def public_flags(args: argparse.Namespace) -> dict:
    """The flags as /sdapi/v1/cmd-flags shows them: credentials masked, paths as text."""
    flags = {}
    for key, value in vars(args).items():
        if key in SECRET_FLAGS:
            value = "********" if value else None
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [str(v) for v in value]
        flags[key] = value
    return flags


def run_server(argv: list[str]) -> int:
    args = server_parser().parse_args(argv)
    from .api.security import parse_credentials
    from .server_options import ServerOptions

    try:
        auth = parse_credentials([args.auth, args.api_auth])
    except ValueError as exc:
        print(f"error: --auth/--api-auth: {exc}", file=sys.stderr)
        return 2
    if args.listen and not auth and not args.insecure:
        print("error: --listen exposes Easel to your network; add --auth USER:PASSWORD (or --insecure)",
              file=sys.stderr)
        return 2
    if _flag_error(args):
        print(f"error: {_flag_error(args)}", file=sys.stderr)
        return 2
    if args.api_max_body_mb <= 0:
        print("error: --api-max-body-mb must be positive", file=sys.stderr)
        return 2
    if args.port is None:
        args.port = 7861 if args.nowebui else 7860
    _setup(args)
    from .startup import serve  # answers HTTP at once; torch, gradio and the engine load behind it

    def make_easel(stage):
        stage("Importing torch and the engine")
        from .app import build

        stage("Finding models and extensions")
        return build(_options(args))

    origins = [o.strip() for o in args.cors_allow_origins.split(",") if o.strip()]
    started = serve(ServerOptions(host="0.0.0.0" if args.listen else "127.0.0.1", port=args.port, auth=auth,
                                  ui=not args.nowebui, api=args.api or args.nowebui, cors_allow_origins=origins,
                                  max_body_bytes=int(args.api_max_body_mb * (1 << 20)), flags=public_flags(args)),
                    make_easel)
    if isinstance(started.failure, ValueError):
        print(f"error: {started.failure}", file=sys.stderr)
        return 2
    if started.failure is not None:
        return 1  # logged with its traceback
    if started.easel is not None and started.easel.restart_requested.is_set():
        print("[easel] restarting", flush=True)  # "Apply and restart UI": start again with the same flags
        os.execv(sys.executable, [sys.executable, "-m", "webui.cli", *argv])
    return 0


FLAGS = {"sampler_name": "sampler", "n_iter": "batch-count", "checkpoint": "model"}  # request field -> flag


def _field_errors(exc) -> int:
    """Each invalid field as the flag that set it; exit status 2, as argparse uses for bad flags."""
    for error in exc.errors:
        flag = FLAGS.get(error.field, error.field.replace("_", "-"))
        print(f"error: --{flag}: {error.message}", file=sys.stderr)
    return 2


def _flag_error(args: argparse.Namespace) -> str | None:
    """Flags that disagree, found before anything heavy is imported."""
    try:
        _precision(args)
    except ValueError as exc:
        return str(exc)
    if args.weights == "nf4":
        from .model_manager.nf4 import available, unavailable_message

        if not available():
            return unavailable_message("--weights", "auto, fp16, bf16 or fp8")
    return "--gpu-weights must be a number of MB, 0 or more" if args.gpu_weights < 0 else None


def run_generate(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    if _flag_error(args):
        print(f"error: {_flag_error(args)}", file=sys.stderr)
        return 2
    _setup(args)
    from .app import build
    from .core.request import GenerationRequest, ValidationError

    try:  # constructing the request checks every field, before any model is loaded
        request = GenerationRequest(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                                    sampler_name=args.sampler, scheduler=args.scheduler, cfg_scale=args.cfg_scale,
                                    seed=args.seed, width=args.width, height=args.height,
                                    batch_size=args.batch_size, n_iter=args.batch_count, checkpoint=args.model)
    except ValidationError as exc:
        return _field_errors(exc)
    try:
        easel = build(_options(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            job = easel.submit_txt2img(request)
        except ValidationError as exc:
            return _field_errors(exc)
        _print_progress(job)
        if job.error is not None:
            print(f"\nerror: {job.error}", file=sys.stderr)
            return 1
        result = job.result
        print(file=sys.stderr)
        for warning in result.warnings:
            print(f"note: {warning}", file=sys.stderr)
        for path in result.paths:
            print(path)
        return 0 if not result.interrupted else 130
    finally:
        easel.close()


def _print_progress(job) -> None:
    """A one-line progress bar on stderr while the job runs."""
    interactive = sys.stderr.isatty()
    last = ""
    try:
        while not job.wait(0.2):
            p = job.progress
            if p.total_steps:
                filled = int(30 * p.fraction)
                line = f"[{'#' * filled}{'.' * (30 - filled)}] {p.step}/{p.total_steps}"
            else:
                line = p.text or "waiting"
            if line != last:
                print(("\r" if interactive else "") + line, end="" if interactive else "\n", file=sys.stderr,
                      flush=True)
                last = line
    except KeyboardInterrupt:
        job.interrupt()
        job.wait()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    from .gradio_import import skip_stub_rewriting

    skip_stub_rewriting()  # before anything imports Gradio: 2.3 s of every start
    if argv[:1] == ["generate"]:
        return run_generate(argv[1:])
    code = run_server(argv)
    logging.getLogger(__name__).debug("server ran %.1fs", time.perf_counter() - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
