r"""The ``attn-tutorial`` command line.

* ``attn-tutorial info`` prints what the package sees: its version, PyTorch's, the device it would
  compute on, and where it looks for data.
* ``attn-tutorial train --recipe NAME`` trains a model of the book from a named recipe
  (:mod:`attn_tutorial.configs`): it trains the tokenizer if needed (joint BPE on the training split
  only) and saves it beside the checkpoints, logs to stderr and ``train.log``, checkpoints often
  (``--resume`` continues), and at the end scores greedy BLEU on the validation split and writes a
  model directory (:mod:`attn_tutorial.pretrained`): fp16 weights, tokenizer and a JSON card.
  Under ``torchrun --nproc-per-node N -m attn_tutorial train ...`` it trains in ``N`` processes with
  DistributedDataParallel (see :func:`attn_tutorial.train.fit`); rank 0 writes every file.
* ``attn-tutorial translate --model NAME_OR_DIR`` reads one sentence per line on stdin and writes
  one translation per line on stdout: the same number of lines, in order, an empty line for an empty
  line, whatever the input (see below). Each batch of lines is written and flushed as soon as it is
  translated, so a run that is killed keeps what it translated (lines are taken one at a time when
  stdin is a terminal, else ``--batch-size`` at a time).
* ``attn-tutorial evaluate --model NAME_OR_DIR --split SPLIT`` prints sacreBLEU with its signature
  (``--json`` for machine-readable output); ``--hypotheses FILE`` scores a file of translations
  (one per line) instead of decoding, and refuses one whose line count differs from the split's.

What ``translate`` does with any input, on purpose (warnings go to stderr and name the line):

=================================  ================================================================
input                              what happens
=================================  ================================================================
empty or whitespace-only line      an empty output line; the model is not run
``\r\n`` line ends                 the ``\r`` is dropped (lines are split on ``\n`` only)
a lone ``\r``, tab, other control  replaced by a space (C0/C1 control characters, DEL)
characters
non-breaking and other Unicode     replaced by a plain space (also U+2028/U+2029 separators, which
spaces                             never start a new output line)
zero-width and format characters   removed (U+200B-U+200D, U+2060, BOM U+FEFF, soft hyphen, bidi
                                   marks: Unicode category Cf)
combining marks                    composed with their base letter (Unicode NFC); left alone when
                                   no composed form exists
emoji, scripts the model never     passed to the tokenizer, which maps unknown characters to
saw                                ``<unk>``; the translation is whatever the model makes of it
HTML-like text (``<b>x</b>``)      plain text: translated as characters, never interpreted, so
                                   tags may come out changed, translated or dropped
invalid UTF-8 bytes                each replaced by U+FFFD (an unknown character), with a warning
a line longer than the model       cut into pieces (at sentence punctuation where there is some,
takes at once                      else at a space, else at the token limit), each translated, the
                                   translations joined by a space, with a warning
=================================  ================================================================

Time and memory per line are bounded: a piece holds at most ``data.max_len - 1`` source tokens of
the model's recipe (127 for the shipped models) and no more than its position table allows; its
translation stops after ``2 * S + 10`` tokens (``S`` the piece's source length with EOS; lower with
``--max-len``) and never beyond the position table. So a line's cost grows linearly with its length.

Errors: a mistake the user can fix (an unknown recipe, model or split, missing or damaged data and
model files, an unavailable device, a bad ``--set``, a full disk) exits with status 2 and one line on
stderr that names the thing, what is wrong and what to do (:class:`attn_tutorial.errors.UserError`).
Anything else is a bug: its traceback is printed with a line asking to report it, exit status 1.
Set ``ATTN_TUTORIAL_DEBUG=1`` to get the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import platform
import sys
import time
import traceback
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import torch

from . import __version__
from .configs import (
    DataSpec,
    list_recipes,
)
from .errors import BUG_REPORT_URL, DamagedFileError, UserError
from .multi30k import MULTI30K_SPLITS
from .pretrained import (
    CARD_FILE,
    card_length_penalty,
    list_pretrained,
    load_pretrained,
    read_card,
    resolve_model_dir,
    translate_sentences,
)
from .runtime import (
    DATA_ENV_VAR,
    autocast_dtype,
    data_dir,
    user_device,
)
from .tasks import DATES_SPLITS

__all__ = ["build_parser", "main", "CLIError", "clean_line"]



class CLIError(UserError):
    """An expected failure found by the command line itself: one line on stderr, exit status 2."""


def _info(args: argparse.Namespace) -> int:
    device = user_device(args.device)
    amp = autocast_dtype(device)
    try:
        data: str = str(data_dir())
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"attn_tutorial {__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"device        {device}" + (f" (mixed precision: {str(amp).removeprefix('torch.')})" if amp else ""))
    print(f"data          {data} (set {DATA_ENV_VAR} to change)")
    return 0


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .run import (  # imported here: 'info' and 'translate' need none of it
        TrainRequest,
        train_recipe,
    )

    train_recipe(TrainRequest(args.recipe, out=args.out, overrides=tuple(args.set or ()), epochs=args.epochs,
                              max_steps=args.max_steps, seed=args.seed, resume=args.resume, device=args.device,
                              batch_size=args.batch_size, argv=tuple(argv)))
    return 0


# --------------------------------------------------------------------------------------------
# translate and evaluate
# --------------------------------------------------------------------------------------------


def _read_lines(stream: TextIO) -> list[str]:
    """Lines of ``stream``: split on ``\\n`` (a final ``\\n`` ends the last line, it does not start a new one)."""
    text = stream.read()
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _input_lines(stream: Any) -> Iterator[tuple[str, bool]]:
    """``(line, had invalid UTF-8)`` for each line of ``stream``, as it arrives.

    Lines are split on ``\\n`` only (a final ``\\n`` ends the last line) and lose one trailing
    ``\\r``. Read as bytes when the stream has a binary buffer (standard input does): invalid UTF-8
    becomes U+FFFD. A text stream (a test's ``io.StringIO``) is read as it is.
    """
    raw = getattr(stream, "buffer", None)
    if raw is None and isinstance(stream, (io.BufferedIOBase, io.RawIOBase)):
        raw = stream
    if raw is not None:
        for data in iter(raw.readline, b""):
            data = data.removesuffix(b"\n").removesuffix(b"\r")
            try:
                yield data.decode("utf-8"), False
            except UnicodeDecodeError:
                yield data.decode("utf-8", errors="replace"), True
        return
    for line in iter(stream.readline, ""):
        yield line.removesuffix("\n").removesuffix("\r"), False


def clean_line(text: str) -> str:
    """What ``attn-tutorial translate`` gives the model for one input line (see the module docstring).

    Whitespace of any kind (tabs, a lone ``\\r``, no-break and other Unicode spaces, line and
    paragraph separators) and control characters (Unicode category Cc) become a plain space;
    zero-width and other format characters (category Cf: U+200B-U+200D, U+2060, U+FEFF, soft
    hyphen, bidi marks) are removed; a lone surrogate becomes U+FFFD; the result is composed
    (Unicode NFC, so a letter and its combining accent become one character) and stripped.
    Everything else, emoji and markup included, is kept as it is.

    >>> clean_line("\\ufeffein\\u00a0Hund\\u200b\\tla\\u0308uft\\r")
    'ein Hund läuft'
    """
    out = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
            continue
        category = unicodedata.category(ch)
        if category == "Cc":
            out.append(" ")
        elif category == "Cf":
            continue
        elif category == "Cs":
            out.append("\ufffd")
        else:
            out.append(ch)
    return unicodedata.normalize("NFC", "".join(out)).strip()


def _warn(message: str) -> None:
    print(f"attn-tutorial: warning: {message}", file=sys.stderr, flush=True)


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    device = user_device(args.device)
    try:
        return load_pretrained(args.model, device=device)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None


def _decode_options(args: argparse.Namespace, card: dict[str, Any]) -> dict[str, Any]:
    alpha = card_length_penalty(card) if args.alpha is None else args.alpha
    src_len = card["recipe"]["data"].get("max_len")
    options = {"beam_size": args.beam, "length_penalty_alpha": alpha, "batch_size": args.batch_size, "max_len": args.max_len}
    if isinstance(src_len, int) and not isinstance(src_len, bool) and src_len >= 2:
        options["max_src_len"] = src_len  # the longest source the model was trained on, EOS included
    return options


def _utf8(stream: TextIO) -> None:
    """Read and write UTF-8 whatever the locale says (German text must survive a C locale)."""
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "")
    reconfigure = getattr(stream, "reconfigure", None)
    if encoding != "utf8" and callable(reconfigure):
        reconfigure(encoding="utf-8")


class _Translator:
    """Translates lines in batches for ``translate``, warning about split lines by line number.

    A batch that fails unexpectedly (a bug) is retried line by line; a line that still fails gets an
    empty output line, so the output keeps one line per input line, and is recorded in ``failures``.
    """

    def __init__(self, model: Any, tokenizer: Any, options: dict[str, Any]) -> None:
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.failures: list[tuple[int, BaseException]] = []
        self.limit = options.get("max_src_len")

    def __call__(self, lines: list[str], first: int) -> list[str]:
        """Translations of ``lines``, the first of which is input line number ``first`` (1-based)."""

        def split(i: int, pieces: int, offset: int = first) -> None:
            _warn(
                f"line {offset + i} is longer than the model takes at once ({(self.limit or 128) - 1} tokens): "
                f"translated in {pieces} pieces, joined"
            )

        try:
            return translate_sentences(self.model, self.tokenizer, lines, on_split=split, **self.options)
        except Exception:  # noqa: BLE001 - one bad line must not cost the others their translation
            outputs = []
            for k, line in enumerate(lines):
                try:
                    outputs += translate_sentences(
                        self.model, self.tokenizer, [line], on_split=lambda _, n, k=k: split(k, n), **self.options
                    )
                except Exception as err:  # noqa: BLE001
                    self.failures.append((first + k, err))
                    _warn(f"line {first + k} could not be translated ({type(err).__name__}: {err}); left empty")
                    outputs.append("")
            return outputs


def _translate(args: argparse.Namespace) -> int:
    model, tokenizer, card = _load_model(args)
    if args.no_kv_cache and hasattr(model, "use_kv_cache"):
        model.use_kv_cache = False  # Transformer.decode_step then re-runs the decoder over the prefix
    _utf8(sys.stdin)
    _utf8(sys.stdout)
    translator = _Translator(model, tokenizer, _decode_options(args, card))
    isatty = getattr(sys.stdin, "isatty", None)
    chunk = 1 if callable(isatty) and isatty() else args.batch_size  # a terminal: answer each line at once
    pending: list[str] = []
    number = 0  # of the last line read

    def flush() -> None:
        outputs = translator(pending, number - len(pending) + 1)
        assert len(outputs) == len(pending)
        sys.stdout.write("".join(f"{o}\n" for o in outputs))
        sys.stdout.flush()
        pending.clear()

    for line, invalid in _input_lines(sys.stdin):
        number += 1
        if invalid:
            _warn(f"line {number} is not valid UTF-8: the invalid bytes were replaced by U+FFFD")
        pending.append(clean_line(line))
        if len(pending) >= chunk:
            flush()
    if pending:
        flush()
    if translator.failures:
        where = ", ".join(str(n) for n, _ in translator.failures[:10]) + (", ..." if len(translator.failures) > 10 else "")
        first = translator.failures[0][1]
        traceback.print_exception(type(first), first, first.__traceback__, file=sys.stderr)
        print(
            f"attn-tutorial: error: {len(translator.failures)} of {number} lines could not be translated and were left "
            f"empty (line {where}). This is a bug in attn_tutorial {__version__}: please report it with the traceback "
            f"above at {BUG_REPORT_URL}",
            file=sys.stderr,
        )
        return 1
    return 0


def _read_hypotheses(path: str) -> list[str]:
    """The lines of a hypothesis file (``-``: stdin), split and decoded as ``translate`` reads its input."""
    if path == "-":
        return [line for line, _ in _input_lines(sys.stdin)]
    try:
        with open(path, "rb") as fh:
            return [line for line, _ in _input_lines(fh)]
    except IsADirectoryError:
        raise CLIError(f"--hypotheses {path}: is a directory, not a file of translations") from None
    except FileNotFoundError:
        raise CLIError(f"--hypotheses {path}: no such file") from None


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import (  # sacreBLEU: only this command needs it
        bleu_signature,
        corpus_bleu,
    )
    from .run import first_pairs, load_split

    if args.hypotheses is not None:  # score a file: only the card (for the data set) is needed
        card = read_card(resolve_model_dir(args.model))
        model = tokenizer = None
    else:
        model, tokenizer, card = _load_model(args)
    try:
        spec = DataSpec(**card["recipe"]["data"])
    except (TypeError, ValueError) as err:
        raise DamagedFileError(
            f"{resolve_model_dir(args.model) / CARD_FILE}: recipe.data is not valid ({' '.join(str(err).split())}); "
            "copy the model directory again"
        ) from None
    pairs = first_pairs(load_split(spec, args.split), args.limit)
    options = _decode_options(args, card)
    t0 = time.perf_counter()
    if args.hypotheses is not None:
        hyps = _read_hypotheses(args.hypotheses)
        if len(hyps) != len(pairs):
            limited = f" (--limit {args.limit})" if args.limit is not None else ""
            raise CLIError(
                f"--hypotheses {args.hypotheses} has {len(hyps)} lines but split {args.split}{limited} has "
                f"{len(pairs)} reference sentences: give exactly one translation per line, in order"
            )
    else:
        def split(i: int, pieces: int) -> None:
            _warn(f"sentence {i + 1} of {args.split} is longer than the model takes at once: translated in {pieces} pieces")

        hyps = translate_sentences(model, tokenizer, [s for s, _ in pairs], on_split=split, **options)
    seconds = time.perf_counter() - t0
    score = corpus_bleu(hyps, [t for _, t in pairs])
    signature = bleu_signature()
    if args.json:
        print(json.dumps({
            "model": str(args.model),
            "split": args.split,
            "sentences": len(pairs),
            "beam": args.beam,
            "length_penalty_alpha": options["length_penalty_alpha"],
            "hypotheses": args.hypotheses,
            "score": score.score,
            "signature": signature,
            "bleu": score.format(signature=signature),
            "precisions": list(score.precisions),
            "bp": score.bp,
            "decode_seconds": round(seconds, 3),
        }))
    else:
        print(score.format(signature=signature))
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite float >= 0, got {text!r}")
    return value


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a shipped model's name or a model directory (from 'train')")
    p.add_argument("--beam", type=_positive_int, default=1, help="beam size (1 = greedy, the default)")
    p.add_argument("--alpha", type=_nonnegative_float, default=None,
                   help="GNMT length penalty of beam search (default: the one in the model's card, chosen on "
                        "validation BLEU, else 0.6)")
    p.add_argument("--max-len", type=_positive_int, default=None, help="cap on output tokens per sentence")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="sentences decoded together (default 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    _add_threads(p)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=_positive_int, default=None,
        help="CPU threads for PyTorch (default: PyTorch's choice; 1 is often fastest for small models on a busy machine)",
    )


_INPUT_HELP = """\
any input is handled on purpose (warnings on stderr name the line):
  empty / whitespace-only line   -> empty output line
  CRLF line ends                 -> the CR is dropped; lines are split on LF only
  tab, lone CR, control chars    -> a space
  no-break and other spaces      -> a plain space (U+2028/U+2029 never start a new line)
  zero-width / format chars      -> removed (ZWSP, ZWJ, BOM, soft hyphen, bidi marks)
  combining marks                -> composed with their letter (NFC)
  emoji, unseen scripts          -> unknown characters (<unk>) to the model
  HTML-like text                 -> translated as plain text, never interpreted
  invalid UTF-8 bytes            -> U+FFFD each, with a warning
  a line too long for the model  -> split at sentence punctuation (else a space, else the
                                    token limit), pieces translated and joined, with a warning
each piece's output stops after 2*S+10 tokens (S: its source tokens; --max-len lowers it)
and within the model's position table: time and memory per line grow linearly with its length."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attn-tutorial",
        description="Companion tools of the book 'Attention, from intuition to translation'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="print versions, the compute device and the data directory")
    info.add_argument("--device", default=None, help="override the device (cpu, cuda, cuda:1, mps)")
    info.set_defaults(func=_info)

    train = sub.add_parser(
        "train",
        help="train a model from a named recipe",
        description=f"Train a model from a named recipe. Recipes: {', '.join(list_recipes())}.",
    )
    train.add_argument("--recipe", required=True, help=f"one of: {', '.join(list_recipes())}")
    train.add_argument("--out", default=None, help="output directory (default: runs/RECIPE)")
    train.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epochs")
    train.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many optimizer steps")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    train.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe field, e.g. model.hidden_dim=256, train.lr=3e-4, data.max_train_pairs=1000 (repeatable)",
    )
    train.add_argument("--batch-size", type=_positive_int, default=64, help="sentences per batch for the final val BLEU")
    _add_threads(train)
    train.set_defaults(func=_train, needs_argv=True)

    tr = sub.add_parser(
        "translate",
        help="translate stdin to stdout, line by line",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Translate one sentence per line from stdin to stdout: the same number of lines, in "
        "order, an empty line for an empty line, flushed as it goes.\n"
        f"Shipped models: {', '.join(list_pretrained()) or 'none yet'}.\n\n" + _INPUT_HELP,
    )
    _add_decoding_options(tr)
    tr.add_argument(
        "--no-kv-cache", action="store_true",
        help="Transformer models: recompute the decoder over the whole prefix at every step instead of keeping "
             "a key/value cache (same output, slower; for measuring what the cache buys). Recurrent models have no such cache",
    )
    tr.set_defaults(func=_translate)

    ev = sub.add_parser("evaluate", help="sacreBLEU of a model on a split, with its signature")
    _add_decoding_options(ev)
    ev.add_argument("--split", required=True, help=f"multi30k: {', '.join(MULTI30K_SPLITS)}; dates: {', '.join(DATES_SPLITS)}")
    ev.add_argument("--limit", type=_positive_int, default=None, help="score only the first N sentences")
    ev.add_argument("--json", action="store_true", help="print one JSON object (score, signature, ...)")
    ev.add_argument(
        "--hypotheses", default=None, metavar="FILE",
        help="score this file of translations (one per line, in the split's order; - for stdin) instead of decoding; "
             "a file whose line count differs from the split's is refused",
    )
    ev.set_defaults(func=_evaluate)
    return parser


#: OSErrors of the machine rather than the package (full disk, quota, read-only or forbidden path):
#: reported as one line like user errors.
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR})


def _is_user_error(exc: BaseException) -> bool:
    """Whether ``main`` reports ``exc`` as one line (a user's or the machine's problem) rather than as a bug."""
    if isinstance(exc, (UserError, FileNotFoundError)):  # our own checks; a missing file or folder
        return True
    return isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attn-tutorial`` console script; returns the exit status.

    A user's mistake (:class:`~attn_tutorial.errors.UserError`, a missing file, a full disk) exits
    with status 2 and one line ``attn-tutorial: error: ...`` on stderr. Any other exception is a bug:
    its traceback is printed, then a line asking to report it, and the status is 1. Ctrl-C exits with
    130 (``train`` has written a checkpoint to ``--resume`` from). ``ATTN_TUTORIAL_DEBUG=1`` re-raises
    everything.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    debug = bool(os.environ.get("ATTN_TUTORIAL_DEBUG"))
    try:
        if getattr(args, "needs_argv", False):
            return int(args.func(args, argv))
        return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            raise
        hint = "; continue with --resume" if args.command == "train" else ""
        print(f"attn-tutorial: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (e.g. '| head'): stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if debug:
            raise
        if _is_user_error(exc):
            message = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
                message = f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": ")
            parser.exit(2, f"attn-tutorial: error: {message}\n")
        traceback.print_exc()
        print(
            f"attn-tutorial: this is a bug in attn_tutorial {__version__}, not a mistake of yours: please report it "
            f"with the traceback above at {BUG_REPORT_URL} (python {platform.python_version()}, torch {torch.__version__})",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
