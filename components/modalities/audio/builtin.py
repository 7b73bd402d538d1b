"""The built-in speech data set: which language a voice prompt is in (English, Spanish, French, Italian, Russian).

Debian's `asterisk-core-sounds-{en,es,fr,it,ru}-wav` 1.6.1 (CC-BY-SA-3.0) hold 527-599 human voice prompts per
language at 8 kHz, mono: the same telephone prompts ("please enter your PIN", digits, letters), each recorded in
each language. `make speech-data` fetches the five packages with `apt-get download` and unpacks them with
`dpkg-deb -x` into .cache/speech (no root needed); elsewhere, unpack the same .deb files (packages.debian.org) into
that folder. The prompt's name ("digits/7", "vm-goodbye") is each clip's group: every language's recording of one
prompt lands in one split, so no prompt's words are in two splits and the model cannot score by remembering them.

What it leaves out, and why: the `silence/` prompts (silence, by design), and clips outside
[MIN_SECONDS, MAX_SECONDS] (a few are empty, a few are minutes-long announcements), so the built-in set passes
validation as it is. Language here is confounded with speaker: one voice per package (English and Spanish share
Allison), so the task measures language-or-voice identification; the README says so beside the figures.
"""

from __future__ import annotations

from pathlib import Path

from components.stage import StageError

LANGUAGES = ("en", "es", "fr", "it", "ru")
PACKAGE = "asterisk-core-sounds-{}-wav"
VERSION = "1.6.1-1"
SOUNDS = Path("usr/share/asterisk/sounds")  # inside the unpacked packages: one folder per voice (en_US_f_Allison)
MIN_SECONDS, MAX_SECONDS = 0.3, 20.0
SKIPPED_FOLDERS = ("silence",)


def clips(root: str | Path) -> list[tuple[Path, str, str]]:
    """(file, language, prompt) for every usable prompt under root (where `make speech-data` unpacked the packages),
    sorted by language and prompt.

    Raises:
        StageError: a language's package is not unpacked under root (the message says how to get it).
    """
    import soundfile

    out = []
    for language in LANGUAGES:
        voices = sorted((Path(root) / SOUNDS).glob(f"{language}_*")) if (Path(root) / SOUNDS).is_dir() else []
        if not voices:
            raise StageError(f"the built-in speech data set is not in {root}: run `make speech-data` (it fetches "
                             f"{PACKAGE.format(language)} {VERSION} and the other languages with apt-get download), "
                             "or unpack those Debian packages there with dpkg-deb -x")
        for voice in voices:
            for path in sorted(voice.rglob("*.wav")):
                prompt = path.relative_to(voice).with_suffix("").as_posix()
                if prompt.split("/")[0] in SKIPPED_FOLDERS:
                    continue
                info = soundfile.info(str(path))
                if MIN_SECONDS <= info.duration <= MAX_SECONDS:
                    out.append((path, language, prompt))
    return out
