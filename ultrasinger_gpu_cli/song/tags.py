"""What the song's file says of itself: artist, title, year and genre from its tags, the cover
picture embedded in it, and whether it is a video, for the chart's headers and the ``[CO]``
picture and ``#VIDEO`` beside it.

One ffprobe call reads the tags (the file's, and its audio stream's: Ogg and Opus keep theirs
there), finds the cover (the first picture stream marked as an
attached picture: ID3's APIC, FLAC's and Ogg's picture blocks, MP4's ``covr``) and a video (a
moving picture: a video stream that is neither an attached picture nor a still image); the cover is
copied out of the file as it is stored (JPEG or PNG; another picture format becomes PNG) by
ffmpeg. Without ffprobe there are no tags (the file name gives artist and title). Nothing here
is ever a song's failure: a tag or a picture that cannot be read is simply not written.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ultrasinger_gpu_cli.files import atomic_path
from ultrasinger_gpu_cli.song.audio import file_url
from ultrasinger_gpu_cli.song.paths import clean_text

COVER_SUFFIX = " [CO]"  # UltraStar's cover picture: "Artist - Title [CO].jpg" beside the chart
MAX_COVER_BYTES = 20 * 2**20  # a cover larger than this is no cover (a picture stream of a video)
MAX_GENRE_CHARS = 60
_YEAR = re.compile(r"(?<!\d)(1[89]\d\d|2[01]\d\d)(?!\d)")  # 1800-2199, anywhere in a date
_PICTURE_SUFFIX = {"mjpeg": ".jpg", "png": ".png"}  # stored as they are; any other becomes PNG
_STILL_CODECS = frozenset({"mjpeg", "png", "bmp", "gif", "webp", "tiff", "jpeg2000"})  # a picture, not a video


@dataclass(frozen=True)
class Cover:
    """The picture embedded in a song's file: its stream and the file suffix it is written with."""

    stream_index: int
    codec: str

    @property
    def suffix(self) -> str:
        return _PICTURE_SUFFIX.get(self.codec, ".png")


@dataclass(frozen=True)
class SongTags:
    """The song as its file names it (:func:`song_tags`)."""

    artist: str
    title: str
    year: str | None = None  # four digits
    genre: str | None = None
    cover: Cover | None = None
    video: bool = False  # the file is a video (a music video): UltraStar can play it behind the lyrics


def _probe(path: Path) -> dict:
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return {}
    try:
        out = subprocess.run(
            [ffprobe, "-v", "error", "-protocol_whitelist", "file", "-show_entries",
             "format_tags:stream=index,codec_type,codec_name:stream_tags:stream_disposition=attached_pic", "-of", "json",
             file_url(Path(path))],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        found = json.loads(out.stdout or "{}")
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _tags(probed: dict) -> dict[str, str]:
    """The file's tags, and its first audio stream's where the file has none of that name (Ogg
    and Opus keep theirs in the stream: Vorbis comments); keys in lower case."""
    audio = next((st for st in probed.get("streams") or [] if isinstance(st, dict) and st.get("codec_type") == "audio"), {})
    out: dict[str, str] = {}
    for tags in ((audio.get("tags") or {}), ((probed.get("format") or {}).get("tags") or {})):  # the file's last: they win
        if isinstance(tags, dict):
            out.update({str(k).lower(): str(v).strip() for k, v in tags.items() if str(v).strip()})
    return out


def read_tags(path: str | Path) -> dict[str, str]:
    """The file's tags (ffprobe; keys in lower case); empty where there are none."""
    return _tags(_probe(Path(path)))


def _pictures(probed: dict) -> list[tuple[dict, bool]]:
    """The file's video streams, each with whether it is an attached picture (a cover)."""
    return [(st, (st.get("disposition") or {}).get("attached_pic") == 1) for st in probed.get("streams") or []
            if isinstance(st, dict) and st.get("codec_type") == "video"]  # fmt: skip


def _cover(probed: dict) -> Cover | None:
    return next((Cover(st["index"], str(st.get("codec_name") or "")) for st, attached in _pictures(probed)
                 if attached and isinstance(st.get("index"), int)), None)  # fmt: skip


def _video(probed: dict) -> bool:
    return any(not attached and str(st.get("codec_name") or "") not in _STILL_CODECS for st, attached in _pictures(probed))


def _year(tags: dict[str, str]) -> str | None:
    for key in ("date", "year", "originaldate", "original_year", "tyer", "tdrc"):
        found = _YEAR.search(tags.get(key, ""))
        if found:
            return found.group(1)
    return None


def _genre(tags: dict[str, str]) -> str | None:
    genre = clean_text(tags.get("genre", ""))[:MAX_GENRE_CHARS].strip()
    return genre if genre and not re.fullmatch(r"\(?\d+\)?", genre) else None  # an ID3v1 number names nothing


#: "Artist - Title": a hyphen, an en dash or an em dash with a space either side.
_SEPARATOR = re.compile(r"\s+[-\u2013\u2014]\s+")
#: A track number before the name: zero-padded ("01 Title"), or followed by "." or ")" ("1. Title").
_TRACK = re.compile(r"^(?:0\d{1,2}\s*[.)]?|\d{1,3}\s*[.)])\s+(?=\S)")
#: A track number before "Artist - Title": "1 - Artist - Title" (the name goes on with a separator).
_TRACK_BEFORE_PAIR = re.compile(r"^\d{1,3}\s+[-\u2013\u2014]\s+(?=.*\s[-\u2013\u2014]\s)")
#: yt-dlp's default file name ends in the video's id: "Title [dQw4w9WgXcQ].webm".
_VIDEO_ID = re.compile(r"\s*\[[A-Za-z0-9_-]{11}\]$")
#: The words of what a video site adds to a title in brackets ("(Official Music Video)", "[HD]",
#: "(Lyrics)", "(Video Oficial)"): a bracket of these words only says nothing of the song.
_NOISE_WORDS = frozenset("""official music video audio lyric lyrics visualizer visualiser hd hq 4k uhd 1080p 720p full
    with w/ clip officiel oficial officiale ufficiale videoclip video-clip letra paroles mv m/v""".split())
_LAST_BRACKET = re.compile(r"\s*[(\[]([^()\[\]]*)[)\]]$")
#: Where a file's tags say it came from a video site (yt-dlp writes the page into ``purl`` and
#: ``comment``): its artist tag is the uploader's channel, its title the video's.
_VIDEO_SITE = re.compile(r"https?://(?:[\w-]+\.)*(?:youtube\.com|youtu\.be|vimeo\.com|dailymotion\.com)/", re.I)
_CHANNEL_SUFFIX = re.compile(r"(?:\s*-\s*topic|vevo|\s+official)$", re.I)  # "Rick Astley - Topic", "RickAstleyVEVO"


def without_noise(title: str) -> str:
    """A title without what a video site adds to it: yt-dlp's ``[video id]`` and brackets of
    :data:`_NOISE_WORDS` only ("(Official Music Video)", "[HD]"), from its end. A bracket that
    says something of the song stays ("(Live)", "(feat. Guest)", "(Remastered 2011)")."""
    text = _VIDEO_ID.sub("", clean_text(title))
    while (found := _LAST_BRACKET.search(text)) and found.start() > 0:
        words = found.group(1).lower().split()
        if not words or not all(w.strip(".,:-") in _NOISE_WORDS for w in words):
            break
        text = text[: found.start()].rstrip()
    return text


def named(text: str) -> tuple[str | None, str]:
    """(artist or None, title) from a song's name as people's files carry it: "Artist - Title"
    (a hyphen, en dash or em dash), a track number before it left out ("01 - Artist - Title",
    "01. Title"; "311 - Amber" is a band's name), underscores for spaces ("Artist_-_Title"), and
    what a video site adds to a title left out (:func:`without_noise`)."""
    text = clean_text(text)
    if "_" in text and " " not in text:
        text = text.replace("_", " ")
    text = without_noise(_TRACK_BEFORE_PAIR.sub("", text))
    pair = _SEPARATOR.split(text, maxsplit=1)
    if len(pair) == 2 and pair[0].strip() and pair[1].strip():
        return pair[0].strip(), without_noise(pair[1].strip())
    return None, _TRACK.sub("", text).strip() or text


def _from_video_site(tags: dict[str, str]) -> bool:
    return any(_VIDEO_SITE.search(tags.get(key, "")) for key in ("purl", "comment"))


def song_tags(path: Path) -> SongTags:
    """Artist and title from the tags, else from an "Artist - Title" file name or title tag (a
    title tag with no artist tag often holds both; see :func:`named`), else the name; the year
    (four digits of the date tag), the genre and the embedded cover where the file has them;
    whether it is a video. A file a video site's downloader tagged (its ``purl`` or ``comment``
    a video page) has its channel as the artist tag: there the title's own "Artist - Title" wins."""
    probed = _probe(path)
    tags = _tags(probed)
    artist_tag, title_tag = tags.get("artist"), tags.get("title")
    artist: str | None
    if _from_video_site(tags):
        artist, title = named(title_tag or path.stem)
        if artist is None and artist_tag:
            artist = _CHANNEL_SUFFIX.sub("", artist_tag).strip()
    elif artist_tag and title_tag:
        artist, title = artist_tag, without_noise(title_tag)
    else:
        pairs = [named(path.stem)] + ([named(title_tag)] if title_tag and not artist_tag else [])
        artist, title = next((pair for pair in pairs if pair[0] is not None),
                             (artist_tag, without_noise(title_tag) if title_tag else pairs[0][1]))  # fmt: skip
    return SongTags(artist or "Unknown Artist", title or path.stem, _year(tags), _genre(tags), _cover(probed), _video(probed))


def write_cover(source: Path, cover: Cover, target: Path) -> Path | None:
    """The cover copied out of ``source`` to ``target`` (whose suffix is :attr:`Cover.suffix`),
    whole or not at all; None where ffmpeg cannot, or the picture is larger than
    :data:`MAX_COVER_BYTES`."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return None
    codec = ["-c", "copy"] if cover.codec in _PICTURE_SUFFIX else ["-c:v", "png"]
    try:
        with atomic_path(target) as tmp:
            subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-protocol_whitelist", "file", "-i", file_url(source),
                            "-map", f"0:{cover.stream_index}", *codec, "-frames:v", "1", "-f", "image2", "-update", "1",
                            file_url(tmp)], check=True, capture_output=True, timeout=60)  # fmt: skip (update: a name, never a %d pattern)
            if not 0 < tmp.stat().st_size <= MAX_COVER_BYTES:
                raise ValueError("no picture, or too large to be a cover")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return target


__all__ = ["COVER_SUFFIX", "Cover", "SongTags", "named", "read_tags", "song_tags", "without_noise", "write_cover"]
