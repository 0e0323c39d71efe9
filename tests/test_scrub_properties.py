"""Property tests of the scrubber: a secret of every kind it claims to remove, in random text, never survives.

Hypothesis generates the secret, the text around it and the characters touching it, and shrinks a failure to
its smallest form, so a rule that misses one shape out of many shows up with the exact text that beats it.
Token-shaped secrets are assembled from pieces so that no scanner mistakes this file for a leak.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ostinato.producers import scrub
from ostinato.producers.scrub import Scrubber

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
URLSAFE = ALNUM + "_-"
CONTEXT = string.ascii_letters + string.digits + " \n.,:;!?()[]-_/'\"=@#%&*+<>"
LEFT = [" ", "\n", "\t", "(", "[", "{", "<", "'", '"', "=", ":", ",", ";", "|", ">"]
RIGHT = [" ", "\n", ")", "]", "}", ">", "'", '"', ",", ";", ".", ":", "!", "?", "/"]

BASE = Scrubber(home="/home/alice", user="alice", hostnames=("alice-laptop",), env={"APP_ENV": "production"})
BASE64_SEEDS = 10_000
BASE64_SIZES = (30, 45, 60)
"""Random base64 secrets come from these seeds; :func:`test_random_base64_secrets_are_all_removed` checks
every one of them, so the property test below only varies where they stand."""


@dataclass(frozen=True)
class Planted:
    """A secret as written in text, the fragments of it that must not survive, and who scrubs it."""

    text: str
    cores: tuple[str, ...]
    scrubber: Scrubber = BASE
    tails: str = "-_:"
    """Which of these may touch its end with more text after: none for host names, where ``-x`` and ``_x``
    continue the name, no ``:`` for an IPv6 address without brackets, where ``:x`` continues it."""
    left: tuple[str, ...] = tuple(LEFT)
    """What may stand right before it (":" cannot before an IPv6 address without brackets)."""


def chars(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=low, max_size=high)


def with_digit(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    """A run with at least one digit somewhere (real keys always have one)."""

    def insert(run: str, digit: str, at: int) -> str:
        at %= len(run) + 1
        return run[:at] + digit + run[at:]

    return st.builds(
        insert, chars(alphabet, low - 1, high - 1), chars(string.digits, 1, 1), st.integers(0, high)
    )


def keyed(prefix: str, body: st.SearchStrategy[str]) -> st.SearchStrategy[Planted]:
    return body.map(lambda b: Planted(prefix + b, (b,)))


def provider_keys() -> st.SearchStrategy[Planted]:
    sk = "s" + "k-"
    return st.one_of(
        keyed(sk, with_digit(URLSAFE, 20, 60)),
        keyed(sk + "proj-", with_digit(URLSAFE, 20, 60)),
        keyed(sk + "ant-api03-", with_digit(URLSAFE, 20, 60)),
        *(keyed(f"{stem}_", chars(ALNUM, 16, 40)) for stem in ("sk_live", "sk_test", "rk_live")),
        *(keyed(f"g{'h'}{kind}_", chars(ALNUM, 20, 40)) for kind in "pousr"),
        keyed("github" + "_pat_", chars(ALNUM + "_", 20, 82)),
        *(keyed(stem, chars(UPPER_DIGITS, 16, 16)) for stem in ("AK" + "IA", "AS" + "IA")),
        *(keyed(f"xo{'x'}{kind}-", chars(ALNUM + "-", 10, 40)) for kind in "abposr"),
        keyed("gl" + "pat-", chars(URLSAFE, 20, 30)),
        keyed("AI" + "za", chars(URLSAFE, 35, 35)),
        keyed("h" + "f_", chars(ALNUM, 30, 40)),
        keyed("np" + "m_", chars(ALNUM, 36, 36)),
        keyed("py" + "pi-", chars(URLSAFE, 50, 80)),
    )


def bearer_tokens() -> st.SearchStrategy[Planted]:
    """``Bearer x`` and ``Authorization:`` headers; a token needs a digit or an inner symbol (the claim)."""
    token = chars(ALNUM + "._~+/=-", 8, 60).filter(lambda t: re.search(r"[0-9]|[._~+/-][A-Za-z0-9]", t))
    scheme = st.sampled_from(["Bearer", "bearer", "BEARER"])
    header = st.sampled_from(
        ["Authorization: ", "authorization=", "Proxy-Authorization: ", '"Authorization": "']
    )
    kind = st.sampled_from(["Bearer ", "Basic ", "Token ", ""])
    return st.one_of(
        st.builds(lambda s, t: Planted(f"{s} {t}", (t,)), scheme, token),
        st.builds(lambda h, k, t: Planted(f"{h}{k}{t}", (t,)), header, kind, chars(ALNUM + "+/=._-", 8, 60)),
    )


SECRET_KEYS = scrub._SECRET_KEYS
ASSIGNMENTS = ["=", ": ", ":", " = ", " : "]
UNQUOTED = ALNUM + "!#$%*+./@^_~-:"


def assignments() -> st.SearchStrategy[Planted]:
    """``password=…``, ``"api_key": "…"``, ``--token …`` in any letter case of the key (values hold a digit,
    so that none is a piece of the key that stays)."""
    key = st.builds(lambda k, upper: k.upper() if upper else k, st.sampled_from(SECRET_KEYS), st.booleans())
    plain = st.builds(
        lambda k, s, v: Planted(f"{k}{s}{v}", (v,)),
        key,
        st.sampled_from(ASSIGNMENTS),
        with_digit(UNQUOTED, 4, 30),
    )
    quoted = st.builds(
        lambda k, q, v: Planted(f"{q}{k}{q}: {q}{v}{q}", (v,)),
        key,
        st.sampled_from(['"', "'"]),
        with_digit(ALNUM + " !#$%*+,./:;@^_~-=&", 4, 30).filter(lambda v: v.strip() == v and v.strip()),
    )
    flag_name = st.sampled_from(
        ["--password", "--db-password", "--token", "--api-key", "--client-secret", "-passwd"]
    )
    flag = st.builds(
        lambda f, v: Planted(f"{f} {v}", (v,)), flag_name, with_digit(ALNUM + "!#$%*+./@^_~:", 4, 30)
    )
    return st.one_of(plain, quoted, flag)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def jwts() -> st.SearchStrategy[Planted]:
    claims = st.dictionaries(
        st.sampled_from(["sub", "iat", "exp", "name", "scope"]),
        st.integers(0, 2**40) | chars(ALNUM, 1, 12),
        min_size=1,
    )

    def build(alg: str, payload: dict[str, object], signature: bytes) -> Planted:
        header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        body, sig = b64url(json.dumps(payload).encode()), b64url(signature)
        return Planted(f"{header}.{body}.{sig}", (body, sig) if len(sig) >= 4 else (body,))

    return st.builds(
        build, st.sampled_from(["HS256", "RS256", "ES384"]), claims, st.binary(min_size=16, max_size=64)
    )


def long_hex() -> st.SearchStrategy[Planted]:
    return st.builds(
        lambda raw, upper, prefix: Planted(
            prefix + (raw.hex().upper() if upper else raw.hex()), (raw.hex()[:32],)
        ),
        st.binary(min_size=16, max_size=64),
        st.booleans(),
        st.sampled_from(["", "0x", "sha256:"]),
    )


def random_base64(seed: int, size: int, urlsafe: bool) -> str:
    raw = random.Random(seed).randbytes(size)
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()


def long_base64() -> st.SearchStrategy[Planted]:
    """Real random secrets (seeded, so every one is known to be checked), 30 to 60 bytes, padded or not."""

    def build(seed: int, size: int, urlsafe: bool, padded: bool) -> Planted:
        secret = random_base64(seed, size, urlsafe)
        secret = secret if padded else secret.rstrip("=")
        return Planted(secret, (secret.rstrip("=")[:20], secret.rstrip("=")[-20:]))

    return st.builds(
        build, st.integers(0, BASE64_SEEDS - 1), st.sampled_from(BASE64_SIZES), st.booleans(), st.booleans()
    )


def private_keys() -> st.SearchStrategy[Planted]:
    def build(kind: str, lines: list[bytes]) -> Planted:
        body = [base64.b64encode(line).decode() for line in lines]
        text = f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(body) + f"\n-----END {kind}PRIVATE KEY-----"
        return Planted(text, tuple(b for b in body if len(b) >= 8))

    return st.builds(
        build,
        st.sampled_from(["", "RSA ", "EC ", "OPENSSH "]),
        st.lists(st.binary(min_size=6, max_size=48), min_size=1, max_size=4),
    )


LABEL = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
TLD = chars(string.ascii_letters, 2, 8)


def emails() -> st.SearchStrategy[Planted]:
    atom = chars(ALNUM + "_%+-", 1, 12)
    local = st.lists(atom, min_size=1, max_size=3).map(".".join)
    domain = st.builds(
        lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, min_size=1, max_size=3), TLD
    )
    return st.builds(lambda lo, do: Planted(f"{lo}@{do}", (f"{lo}@", f"@{do}")), local, domain)


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (address.is_loopback or address.is_unspecified)


def ipv4s() -> st.SearchStrategy[Planted]:
    def build(address: ipaddress.IPv4Address, port: int | None) -> Planted:
        text = str(address) if port is None else f"{address}:{port}"
        return Planted(text, (str(address),))

    return st.builds(build, st.ip_addresses(v=4).filter(_public), st.none() | st.integers(1, 65535))


def ipv6s() -> st.SearchStrategy[Planted]:
    """Compressed, exploded, bracketed with a port; the rule's claim: an address with a digit in it."""

    def build(address: ipaddress.IPv6Address, form: str, port: int) -> Planted:
        written = address.exploded if form == "exploded" else str(address)
        groups = [g for g in written.split(":") if g]
        cores = tuple(":".join(pair) for pair in itertools.pairwise(groups) if len(":".join(pair)) >= 5)
        text = f"[{written}]:{port}" if form == "bracketed" else written
        if form == "bracketed":
            return Planted(text, (written, *cores))
        return Planted(text, (written, *cores), tails="-_", left=tuple(g for g in LEFT if g != ":"))

    address = st.ip_addresses(v=6).filter(_public).filter(lambda a: any(ch.isdigit() for ch in str(a)))
    return st.builds(
        build, address, st.sampled_from(["compressed", "exploded", "bracketed"]), st.integers(1, 65535)
    )


NAME = st.from_regex(r"\A[a-z][a-z0-9]{2,11}\Z").filter(lambda n: n not in scrub._GENERIC_USERS)
PARTS = ("proj", "src", "app", "data", "build", "lib", "site-packages", "x.py", "run.sh", "notes.txt")
PART = st.sampled_from(PARTS)


def home_paths() -> st.SearchStrategy[Planted]:
    """Another user's home (POSIX, macOS, Windows) and this machine's own, with the user's name in it."""

    def other(user: str, style: str, rest: list[str]) -> Planted:
        if style == "windows":
            return Planted("C:\\Users\\" + "\\".join([user, *rest]), (user,))
        parent = "/home/" if style == "posix" else "/Users/"
        return Planted(parent + "/".join([user, *rest]), (user,))

    def own(user: str, rest: list[str]) -> Planted:
        scrubber = Scrubber(home=f"/home/{user}", user=user, hostnames=(), env={})
        return Planted("/".join([f"/home/{user}", *rest]), (user,), scrubber)

    rest = st.lists(PART, max_size=3)
    return st.one_of(
        st.builds(other, NAME, st.sampled_from(["posix", "macos", "windows"]), rest),
        st.builds(own, NAME, rest),
    )


def absolute_paths() -> st.SearchStrategy[Planted]:
    """Directories go, the last part stays (by design): the directories are the cores."""
    directory = st.from_regex(r"\A[a-z][a-z0-9_-]{3,11}\Z").filter(lambda d: d not in PARTS)

    def build(top: str, dirs: list[str], last: str) -> Planted:
        return Planted("/" + "/".join([top, *dirs, last]), (f"{top}/{dirs[0]}", *dirs))

    return st.builds(
        build,
        st.sampled_from(["srv", "opt", "var", "data", "mnt"]),
        st.lists(directory, min_size=1, max_size=3, unique=True),
        PART,
    )


def env_values() -> st.SearchStrategy[Planted]:
    """Values of the environment: any of 4+ characters under a secret-looking name, others of 6+."""
    value = with_digit(ALNUM + "-_.:/@+=", 4, 24).filter(
        lambda v: (
            v[0] in string.ascii_letters
            and not scrub._TRIVIAL_ENV_VALUE.fullmatch(v)
            and not scrub._LOCALE_VALUE.fullmatch(v)
            and not scrub._is_path_like(v)
        )
    )
    name = st.sampled_from(
        ["DEPLOY_TOKEN", "DB_PASSWORD", "STRIPE_API_KEY", "PROJECT_CODENAME", "BUILD_LABEL"]
    )

    def build(name: str, value: str) -> Planted:
        assume(len(value) >= 6 or scrub._is_secret_env_name(name))
        scrubber = Scrubber(home="", user="", hostnames=(), env={name: value, "APP_ENV": "production"})
        return Planted(value, (value,), scrubber)

    return st.builds(build, name, value)


def host_names() -> st.SearchStrategy[Planted]:
    """This machine's names and other hosts in its domain, and names under private top-level domains."""

    def own(short: str, domain: list[str], other: str, which: int, upper: bool) -> Planted:
        suffix = ".".join(domain)
        scrubber = Scrubber(home="", user="", hostnames=(short, f"{short}.{suffix}"), env={})
        text = [short, f"{short}.{suffix}", f"{other}.{suffix}", suffix][which]
        return Planted(text.upper() if upper else text, (short, suffix), scrubber, tails="")

    def internal(labels: list[str], tld: str) -> Planted:
        return Planted(".".join([*labels, tld]), (".".join(labels),), tails="")

    domain = st.lists(LABEL.filter(lambda label: len(label) >= 3), min_size=2, max_size=3)
    numbered = st.from_regex(r"\A[a-z]{2,6}[0-9]{1,3}\Z")
    return st.one_of(
        st.builds(
            own,
            NAME.filter(lambda n: n not in scrub._LOCAL_NAMES),
            domain,
            NAME,
            st.integers(0, 3),
            st.booleans(),
        ),
        st.builds(
            internal,
            st.lists(numbered, min_size=1, max_size=3),
            st.sampled_from(["internal", "intranet", "localdomain", "corp", "lan", "local"]),
        ),
    )


def url_credentials() -> st.SearchStrategy[Planted]:
    userinfo = chars(ALNUM + "._~-", 3, 12)
    return st.builds(
        lambda scheme, user, password, host: Planted(
            f"{scheme}://{user}:{password}@{host}/x", (f"{user}:{password}",)
        ),
        st.sampled_from(["https", "postgresql", "redis", "ssh"]),
        userinfo,
        userinfo,
        st.sampled_from(["api.example.com", "db", "git.example.org:22"]),
    )


def cookies() -> st.SearchStrategy[Planted]:
    pair = st.builds(lambda k, v: f"{k}={v}", chars(string.ascii_lowercase, 2, 8), with_digit(ALNUM, 6, 20))
    return st.builds(
        lambda header, pairs: Planted(
            f"{header}: " + "; ".join(pairs), tuple(p.split("=")[1] for p in pairs)
        ),
        st.sampled_from(["Cookie", "Set-Cookie", "cookie"]),
        st.lists(pair, min_size=1, max_size=3),
    )


KINDS: dict[str, Callable[[], st.SearchStrategy[Planted]]] = {
    "provider keys": provider_keys,
    "bearer and authorization": bearer_tokens,
    "password= and flags": assignments,
    "JWT": jwts,
    "long hex": long_hex,
    "long base64": long_base64,
    "private key": private_keys,
    "e-mail": emails,
    "IPv4": ipv4s,
    "IPv6": ipv6s,
    "home paths": home_paths,
    "absolute paths": absolute_paths,
    "environment values": env_values,
    "host names": host_names,
    "URL credentials": url_credentials,
    "cookies": cookies,
}


@dataclass(frozen=True)
class Sample:
    planted: Planted
    before: str
    after: str

    @property
    def text(self) -> str:
        return self.before + self.planted.text + self.after


@st.composite
def samples(draw: st.DrawFn, kind: str) -> Sample:
    """The secret between random text; the characters right beside it are the ones text really has there."""
    planted = draw(KINDS[kind]())
    before = draw(chars(CONTEXT, 0, 30)) + draw(st.sampled_from(planted.left))
    glue = draw(st.sampled_from(RIGHT))
    if planted.tails and draw(st.booleans()):  # touching it, as "-7" in "jo@example.com-7"
        glue = draw(st.sampled_from(planted.tails)) + draw(chars(ALNUM, 1, 3))
    after = glue + " " + draw(chars(CONTEXT, 0, 30))
    return Sample(planted, before, after)


TOKEN = re.compile("|".join(re.escape(token) for token in (*scrub._TOKENS, "<ticket>")))


def leaked(sample: Sample, result: str) -> list[str]:
    """Cores found in the result (tokens blanked out so they cannot join text into a core)."""
    blanked = TOKEN.sub("\x00", result).lower()
    context = (sample.before + "\x00" + sample.after).lower()
    cores = [core.lower() for core in sample.planted.cores]
    for core in cores:
        assume(core not in context)  # the random text happened to contain it: nothing to learn
    return [core for core in cores if core in blanked]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_planted_secret_survives(kind: str) -> None:
    @PROPERTY
    @given(samples(kind))
    def check(sample: Sample) -> None:
        result = sample.planted.scrubber.text(sample.text)
        assert leaked(sample, result) == [], (sample.text, result)
        assert sample.planted.scrubber.text(result) == result  # scrubbed text is a fixed point

    check()


@pytest.mark.parametrize("urlsafe", [False, True])
def test_random_base64_secrets_are_all_removed(urlsafe: bool) -> None:
    """Every seeded secret the property test can draw goes (the rule judges randomness)."""
    kept = [
        secret
        for size in BASE64_SIZES
        for seed in range(BASE64_SEEDS)
        if BASE.text(f"k {(secret := random_base64(seed, size, urlsafe))} x") != "k <redacted> x"
    ]
    assert kept == []
