"""Write the bundled sample: a small web of news-like pages and a Pushshift-format dump linking to them.

Every word is the project's own: article bodies come from the sentence patterns and word lists
below, filled in by a seeded random generator, and the few non-English pages are hand-written.
Run `make sample` to regenerate sample/web and sample/dumps (the output is deterministic).
"""
from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import zstandard

from sample.archive import Capture, write_archive
from sample.web import ARCHIVE_ROOT, WEB_ROOT, page_file

DUMP = Path(__file__).parent / "dumps" / "RS_sample.zst"
SEED = 2019

TOPICS = {
    "recycling": dict(
        things=["plastic bottles", "glass jars", "cardboard", "aluminium cans", "food waste", "old phones",
                "paper cups", "batteries", "textiles", "compost"],
        places=["Riverton", "the county depot", "the north ward", "Lakeside", "the old mill site"],
        roles=["waste manager", "council member", "plant operator", "environmental scientist", "resident"],
        verbs=["sorted", "collected", "shipped abroad", "burned", "buried", "resold", "washed"]),
    "transit": dict(
        things=["bus lanes", "tram lines", "bike paths", "night buses", "ticket prices", "train stations",
                "park-and-ride lots", "crosswalks", "electric buses", "timetables"],
        places=["Eastgate", "the harbour district", "Millbrook", "the city centre", "the ring road"],
        roles=["transport planner", "bus driver", "commuter", "mayor", "engineer"],
        verbs=["extended", "delayed", "redesigned", "funded", "cancelled", "tested", "opened"]),
    "astronomy": dict(
        things=["comets", "the lunar eclipse", "meteor showers", "a new telescope", "dark skies",
                "exoplanets", "sunspots", "the northern lights", "star charts", "satellite trails"],
        places=["the hill observatory", "Cedar Ridge", "the planetarium", "the desert station", "Highmoor"],
        roles=["astronomer", "amateur stargazer", "physics teacher", "observatory director", "student"],
        verbs=["observed", "photographed", "measured", "catalogued", "tracked", "announced", "confirmed"]),
    "gardening": dict(
        things=["tomatoes", "raised beds", "bees", "rainwater barrels", "seed swaps", "apple trees",
                "allotments", "weeds", "mulch", "wildflower verges"],
        places=["the community garden", "Greenfield", "the school grounds", "Old Town", "the riverside plots"],
        roles=["gardener", "beekeeper", "horticulturist", "volunteer", "landscape designer"],
        verbs=["planted", "harvested", "pruned", "watered", "protected", "shared", "grew"]),
    "cooking": dict(
        things=["sourdough", "street food", "fermented vegetables", "local cheese", "spices",
                "cast iron pans", "school lunches", "soup kitchens", "food prices", "recipes"],
        places=["the covered market", "Portside", "the night market", "the culinary school", "Kingsbury"],
        roles=["chef", "baker", "food critic", "nutritionist", "restaurant owner"],
        verbs=["baked", "served", "tasted", "priced", "reinvented", "fermented", "sold"]),
    "software": dict(
        things=["open source libraries", "password managers", "database outages", "code reviews",
                "browser updates", "security patches", "legacy systems", "test suites", "cloud bills",
                "programming courses"],
        places=["the startup hub", "Northpoint", "the university lab", "the data centre", "Silverdale"],
        roles=["developer", "security researcher", "product manager", "system administrator", "student"],
        verbs=["released", "patched", "rewrote", "audited", "deployed", "benchmarked", "documented"]),
    "health": dict(
        things=["flu vaccines", "sleep habits", "clinic waiting times", "daily walks", "sugar intake",
                "hospital beds", "mental health services", "air quality", "hand washing", "check-ups"],
        places=["the general hospital", "Westfield", "the rural clinics", "the health centre", "Brookside"],
        roles=["doctor", "nurse", "epidemiologist", "patient", "pharmacist"],
        verbs=["studied", "reported", "improved", "reduced", "monitored", "recommended", "reviewed"]),
    "sports": dict(
        things=["the marathon", "youth football", "the new stadium", "cycling races", "swimming lessons",
                "ticket sales", "the cup final", "training camps", "women's rugby", "the climbing wall"],
        places=["the county ground", "Fairhaven", "the sports park", "Hillcrest", "the lakeside track"],
        roles=["coach", "team captain", "referee", "sports reporter", "club secretary"],
        verbs=["won", "trained for", "hosted", "postponed", "sold out", "celebrated", "rebuilt"]),
    "housing": dict(
        things=["rents", "new apartments", "heat pumps", "empty shops", "building permits",
                "social housing", "insulation grants", "mortgage rates", "tiny homes", "zoning rules"],
        places=["the docklands", "Ashford", "the east end", "the suburbs", "Meadowvale"],
        roles=["architect", "tenant", "housing officer", "developer", "economist"],
        verbs=["built", "approved", "renovated", "priced", "blocked", "insulated", "planned"]),
    "wildlife": dict(
        things=["otters", "migrating geese", "hedgehogs", "river trout", "bats", "wild boar",
                "nesting boxes", "the heron colony", "red squirrels", "butterflies"],
        places=["the wetlands", "Thornbury", "the nature reserve", "the estuary", "Oakwood forest"],
        roles=["ecologist", "park ranger", "wildlife photographer", "birdwatcher", "volunteer"],
        verbs=["counted", "spotted", "tagged", "rescued", "protected", "released", "recorded"]),
    "education": dict(
        things=["class sizes", "school libraries", "exam results", "free meals", "coding clubs",
                "teacher training", "night classes", "language lessons", "field trips", "tuition fees"],
        places=["the secondary school", "Elmstead", "the adult college", "the village school", "Rosemount"],
        roles=["head teacher", "pupil", "parent", "lecturer", "school governor"],
        verbs=["introduced", "expanded", "cut", "praised", "reformed", "funded", "tested"]),
}

PEOPLE = ["Ana Ribeiro", "Tom Becker", "Priya Nair", "Jonas Lind", "Mei Chen", "Sam Okafor", "Lucy Hart",
          "Diego Alvarez", "Hannah Roth", "Omar Haddad", "Grace Mwangi", "Pavel Novak", "Ines Moreau",
          "Kenji Sato", "Fatima Zahra", "Oliver Quinn", "Noor Saleh", "Erik Dahl", "Chloe Martin"]
ADJECTIVES = ["surprising", "modest", "dramatic", "steady", "worrying", "welcome", "unusual", "costly",
              "gradual", "remarkable", "controversial", "overdue"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

SENTENCES = [
    "{Person}, a {role} in {place}, said that {thing} had {verb} more than anyone expected.",
    "Figures released on {weekday} show that {number} percent of {thing} were {verb} last year.",
    "The change has been {adj}, according to {person}, who has worked on {thing} since {year}.",
    "In {place}, {thing} are now {verb} twice a week instead of once a month.",
    "Critics argue that {thing} should have been {verb} years ago, and that {other} matter just as much.",
    "\"We simply did not have the money,\" {person} admitted. \"Now we do, and {thing} come first.\"",
    "A report from {place} found a {adj} link between {thing} and {other}.",
    "Local residents have {verb} {other} since {year}, long before the council took notice.",
    "Nobody in {place} could remember a season like it, with {thing} {verb} almost every day.",
    "The budget for {thing} rose to {money} this year, up from {money2} in {year}.",
    "Asked about {other}, the {role} smiled and said the answer was more complicated than it looked.",
    "There are still questions about who will pay for {thing}, and for how long.",
    "Some {role}s in {place} say the {adj} results are only the beginning.",
    "{Person} keeps a notebook of every time {thing} were {verb}, and it now runs to {number} pages.",
    "The first trial, held near {place} in {year}, {verb} {thing} with {adj} success.",
    "Most people we spoke to had opinions about {thing}, but few knew that {other} were {verb} too.",
    "On a cold {weekday} morning, a small crowd gathered in {place} to watch {thing} being {verb}.",
    "Experts warn that a {adj} winter could undo much of the progress on {thing}.",
    "\"It is not glamorous work,\" said {person}. \"But {thing} do not look after themselves.\"",
    "The plan for {place} includes {thing}, {other}, and a review every {number} months.",
    "Since the scheme began, about {number} households have taken part, many of them for the first time.",
    "The {role} pointed out that {thing} cost less to maintain than {other}.",
    "By the end of {year}, officials hope that {thing} will be {verb} across the whole region.",
    "Not everyone is convinced; one {role} called the project {adj} and hard to measure.",
]

LAYOUTS = {
    "classic": ("<article class=\"story\">\n<h1>{title}</h1>\n<p class=\"byline\">By {author} | {date}</p>\n"
                "{body}\n</article>"),
    "divs": ("<div class=\"story-body\" itemprop=\"articleBody\">\n<h1 class=\"headline\">{title}</h1>\n"
             "<div class=\"meta\"><span class=\"author\">{author}</span> <time>{date}</time></div>\n{body}\n</div>"),
    "blog": ("<div id=\"content\"><div class=\"post\">\n<h2 class=\"post-title\">{title}</h2>\n"
             "<div class=\"entry\">\n{body}\n</div>\n<p class=\"postmeta\">Posted by {author} on {date}</p>\n</div></div>"),
}

SITES = [
    ("www.harbourgazette.example", "Harbour Gazette", "classic", "news"),
    ("news.northfieldpost.example", "Northfield Post", "divs", "world"),
    ("www.thegreenledger.example", "The Green Ledger", "classic", "environment"),
    ("blog.fieldnotes.example", "Field Notes", "blog", "posts"),
    ("www.metrodaily.example", "Metro Daily", "divs", "city"),
]

NON_ENGLISH = {
    "de": ("Neue Radwege in der Altstadt",
           ["Die Stadt hat am Montag drei neue Radwege eröffnet. Nach Angaben der Verwaltung sollen sie "
            "den Verkehr in der Altstadt deutlich entlasten und die Luft in den engen Gassen verbessern.",
            "Viele Anwohner begrüßen die Pläne, doch einige Geschäftsleute befürchten, dass ihre Kunden "
            "künftig keinen Parkplatz mehr finden. Der Bürgermeister versprach, die Lage im Herbst noch "
            "einmal zu prüfen und die Ergebnisse öffentlich vorzustellen.",
            "Bis zum Ende des nächsten Jahres sollen weitere zwölf Kilometer Radweg entstehen. Die Kosten "
            "werden zum größten Teil vom Land getragen, der Rest kommt aus dem städtischen Haushalt."]),
    "fr": ("Le marché couvert rouvre ses portes",
           ["Après deux ans de travaux, le marché couvert du centre-ville a rouvert samedi matin. Des "
            "centaines d'habitants sont venus dès l'aube pour retrouver leurs commerçants préférés.",
            "Les étals ont été entièrement rénovés et le toit laisse désormais entrer la lumière du jour. "
            "Selon la mairie, la consommation d'énergie du bâtiment a baissé de moitié grâce aux nouveaux "
            "panneaux solaires installés cet hiver.",
            "Les producteurs locaux espèrent que cette réouverture attirera aussi les touristes, qui "
            "passaient jusqu'ici sans s'arrêter. Une fête est prévue le mois prochain pour célébrer l'événement."]),
    "es": ("La biblioteca municipal amplía su horario",
           ["La biblioteca municipal abrirá también los domingos a partir del próximo mes. La decisión "
            "llega después de que más de dos mil vecinos firmaran una petición durante el invierno.",
            "Los responsables explicaron que contratarán a cuatro nuevos empleados y que la sala infantil "
            "tendrá actividades gratuitas cada fin de semana. También se renovarán los ordenadores.",
            "Los estudiantes celebran el cambio, porque en época de exámenes suelen faltar lugares "
            "tranquilos para estudiar. El ayuntamiento revisará el horario dentro de un año."]),
    "it": ("Il festival del pane torna in piazza",
           ["Dopo tre anni di pausa, il festival del pane torna nella piazza principale del paese. Per due "
            "giorni i fornai della valle mostreranno le loro ricette tradizionali e nuove creazioni.",
            "Gli organizzatori prevedono oltre diecimila visitatori e hanno chiesto ai residenti di usare "
            "i mezzi pubblici. Saranno disponibili navette gratuite dalla stazione ogni venti minuti.",
            "Una parte del ricavato sarà donata alla mensa dei poveri della città. Il sindaco ha ringraziato "
            "i volontari che hanno reso possibile l'evento."]),
}

SHORT_PAGES = [
    ("Road closure on Mill Lane", "Mill Lane will be closed between the bridge and the school on Tuesday "
     "while workers repair a burst water pipe. Drivers should follow the signed detour."),
    ("Subscribe to keep reading", "This article is for subscribers only. Sign in or start your free trial "
     "to continue reading."),
    ("Weather: a dry week ahead", "Expect sunshine and light winds for most of the week, with a small chance "
     "of showers on Friday evening."),
]


@dataclass
class Page:
    host: str
    path: str
    title: str
    paragraphs: list[str]
    lang: str = "en"

    @property
    def url(self) -> str:
        return f"http://{self.host}/{self.path}"


def fill(rng: random.Random, template: str, words: dict[str, list[str]]) -> str:
    thing, other = rng.sample(words["things"], 2)
    person = rng.choice(PEOPLE)
    values = dict(person=person, Person=person, role=rng.choice(words["roles"]), place=rng.choice(words["places"]),
                  thing=thing, other=other, verb=rng.choice(words["verbs"]), adj=rng.choice(ADJECTIVES),
                  weekday=rng.choice(WEEKDAYS), year=rng.randint(1998, 2018), number=rng.randint(3, 97),
                  money=f"${rng.randint(2, 90)}.{rng.randint(0, 9)} million",
                  money2=f"${rng.randint(1, 60)}.{rng.randint(0, 9)} million")
    sentence = template.format(**values)
    return sentence[0].upper() + sentence[1:]


def article(rng: random.Random, topic: str) -> tuple[str, list[str]]:
    words = TOPICS[topic]
    title = f"{rng.choice(words['places']).removeprefix('the ').title()}: " \
            f"{rng.choice(ADJECTIVES)} news about {rng.choice(words['things'])}"
    paragraphs = [" ".join(fill(rng, rng.choice(SENTENCES), words) for _ in range(rng.randint(3, 5)))
                  for _ in range(rng.randint(5, 8))]
    return title, paragraphs


def syndicated_copy(rng: random.Random, page: Page, host: str) -> Page:
    """The same story on another site, lightly edited: a few words changed and a credit line added."""
    edited = []
    for para in page.paragraphs:
        words = para.split()
        for _ in range(max(1, len(words) // 40)):
            words[rng.randrange(len(words))] = rng.choice(["also", "very", "now", "still", "then"])
        edited.append(" ".join(words))
    credit = f"This story was first published by {dict((h, n) for h, n, *_ in SITES)[page.host]}."
    return Page(host, "syndication/" + page.path.rsplit("/", 1)[-1], page.title, edited + [credit])


def render(page: Page, rng: random.Random) -> str:
    """A full HTML page around the story: navigation, cookie banner, related links and footer."""
    host, name, layout, section = next(s for s in SITES if s[0] == page.host)
    body = "\n".join(f"<p>{p}</p>" for p in page.paragraphs)
    story = LAYOUTS[layout].format(title=page.title, author=rng.choice(PEOPLE),
                                   date=f"2019-0{rng.randint(1, 9)}-{rng.randint(10, 28)}", body=body)
    nav = " ".join(f"<li><a href=\"/{s}\">{s.title()}</a></li>" for s in
                   ["news", "sport", "business", "culture", "opinion", "weather"])
    related = "\n".join(f"<li><a href=\"/{section}/{i}\">More from {name}: story {i}</a></li>"
                        for i in rng.sample(range(100, 999), 4))
    return f"""<!DOCTYPE html>
<html lang="{page.lang}">
<head>
<meta charset="utf-8">
<title>{page.title} | {name}</title>
<meta property="og:title" content="{page.title}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/site.css">
</head>
<body>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience and to show
you personalised advertising. <button>Accept all</button> <a href="/privacy">Manage settings</a></div>
<header><a class="logo" href="/">{name}</a><nav><ul>{nav}</ul></nav>
<form action="/search"><input name="q" placeholder="Search {name}"></form></header>
<main>
{story}
<aside class="related"><h3>Related stories</h3><ul>
{related}
</ul></aside>
<div class="newsletter">Get the best of {name} in your inbox every morning. <a href="/newsletter">Sign up</a></div>
</main>
<footer><p>&copy; 2019 {name}. All rights reserved.</p>
<ul><li><a href="/about">About us</a></li><li><a href="/contact">Contact</a></li>
<li><a href="/terms">Terms of use</a></li><li><a href="/privacy">Privacy policy</a></li></ul></footer>
</body>
</html>
"""


def build_pages(rng: random.Random) -> list[Page]:
    """44 English stories, 5 syndicated near-copies, 4 non-English pages and 3 pages too short to keep."""
    pages = []
    for i, topic in enumerate(list(TOPICS) * 4):
        host, _, _, section = SITES[i % len(SITES)]
        title, paragraphs = article(rng, topic)
        pages.append(Page(host, f"{section}/2019/{topic}-{i:02d}", title, paragraphs))
    for i, original in enumerate(pages[:5]):
        pages.append(syndicated_copy(rng, original, SITES[(i + 2) % len(SITES)][0]))
    for i, (lang, (title, paragraphs)) in enumerate(NON_ENGLISH.items()):
        pages.append(Page(SITES[i][0], f"international/{lang}/story-{i}", title, paragraphs, lang))
    for i, (title, text) in enumerate(SHORT_PAGES):
        pages.append(Page(SITES[i][0], f"briefs/2019/brief-{i}", title, [text]))
    return pages


def submission(rng: random.Random, url: str, title: str, **fields) -> dict:
    """A record with the fields (and field names) of a Pushshift submission dump."""
    record = dict(id=f"{rng.randrange(36**6):06x}", url=url, title=title, score=rng.randint(3, 900),
                  over_18=False, is_self=False, subreddit=rng.choice(["news", "worldnews", "science", "technology",
                                                                     "environment", "UpliftingNews"]),
                  created_utc=1546300800 + rng.randrange(365 * 86400), num_comments=rng.randint(0, 400),
                  author=f"user_{rng.randrange(10**5)}", domain=url.split("/")[2])
    record.update(fields)
    return record


def day(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)


JS_SHELL = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Metro Daily</title>
<script src="/static/app.js"></script></head>
<body><div id="app"></div></body></html>
"""


def build_archive(rng: random.Random) -> tuple[list[Capture], list[dict], dict[str, str]]:
    """Stories whose links are dead today but were archived when they were posted: the captures of the
    sample's archive, their submissions, and the pages the live web serves instead of some of them."""
    stories = [("www.harbourgazette.example", "news/2019/ferry-timetable", "transit", "2019-03-04", "cc"),
               ("news.northfieldpost.example", "world/2019/river-survey", "wildlife", "2019-05-14", "cc"),
               ("www.thegreenledger.example", "environment/2019/compost-pilot", "recycling", "2019-06-20", "redirect"),
               ("blog.fieldnotes.example", "posts/2019/night-sky-diary", "astronomy", "2019-08-09", "wayback"),
               ("www.metrodaily.example", "city/2011/market-hall", "cooking", "2011-10-03", "wayback"),
               ("www.metrodaily.example", "city/2019/stadium-vote", "sports", "2019-09-17", "js")]
    captures, records, live = [], [], {}
    for host, path, topic, posted, how in stories:
        title, paragraphs = article(rng, topic)
        page = Page(host, path, title, paragraphs)
        html, when = render(page, rng), day(posted) + dt.timedelta(days=2, hours=rng.randrange(24))
        records.append(submission(rng, page.url, title, created_utc=int(day(posted).timestamp())))
        if how == "redirect":  # the site moved the story before the crawler came; its new address was crawled too
            moved = f"{page.url}-updated"
            captures += [Capture(page.url, when, status=301, redirect=moved), Capture(moved, when, html)]
        else:
            captures.append(Capture(page.url, when, html, wayback=how == "wayback"))
        if how == "cc":  # a capture long after, outside max_days: not the one taken
            captures.append(Capture(page.url, when + dt.timedelta(days=400), JS_SHELL))
        if how == "js":  # live today, but rendered by JavaScript: no article text in the HTML
            live[page.url] = JS_SHELL
    return captures, records, live


def build_dump(rng: random.Random, pages: list[Page], archived: list[dict]) -> list[str]:
    """Submissions for every page plus the records the URL stage must drop, shuffled, with one corrupt line."""
    records = [submission(rng, p.url, p.title) for p in pages] + archived
    # the same links posted again, in the spellings that URL normalisation folds together
    records += [submission(rng, pages[1].url + "/", pages[1].title),
                submission(rng, pages[2].url + "?utm_source=reddit&amp;utm_medium=social", pages[2].title),
                submission(rng, pages[3].url.replace("http://", "HTTP://") + "#comments", pages[3].title),
                submission(rng, pages[4].url.replace("://www.", "://"), pages[4].title)]
    # a real page, but dropped: low score, NSFW, self post
    records += [submission(rng, pages[6].url + "?ref=low", pages[6].title, score=s) for s in (0, 1, 2)]
    records += [submission(rng, "http://www.metrodaily.example/city/2019/late-night", "NSFW link", over_18=True)]
    records += [submission(rng, f"https://www.reddit.com/r/news/comments/{i}abc/", "Discussion thread",
                           is_self=True) for i in range(3)]
    # links to files, Wikipedia and media hosts
    records += [submission(rng, url, "A link") for url in [
        "https://www.thegreenledger.example/files/annual-report.pdf",
        "https://www.harbourgazette.example/images/harbour.jpg",
        "https://www.metrodaily.example/video/parade.mp4",
        "https://www.metrodaily.example/static/site.css",
        "https://en.wikipedia.org/wiki/Recycling",
        "https://de.wikipedia.org/wiki/Fahrrad",
        "https://i.imgur.com/abc123.png",
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ"]]
    # a link that no longer exists
    records += [submission(rng, "http://news.northfieldpost.example/world/2019/removed-story", "Gone")]
    lines = [json.dumps(r) for r in records]
    rng.shuffle(lines)
    lines.insert(len(lines) // 2, lines[0][: len(lines[0]) // 2])  # a line cut off mid-record
    return lines


def main() -> None:
    rng = random.Random(SEED)
    pages = build_pages(rng)
    shutil.rmtree(WEB_ROOT, ignore_errors=True)
    for page in pages:
        file = page_file(WEB_ROOT, page.url)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(render(page, rng), encoding="utf-8")
    captures, archived, live = build_archive(random.Random(SEED + 1))
    for url, html in live.items():
        page_file(WEB_ROOT, url).write_text(html, encoding="utf-8")
    write_archive(ARCHIVE_ROOT, captures)
    DUMP.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(build_dump(rng, pages, archived)) + "\n").encode()
    DUMP.write_bytes(zstandard.ZstdCompressor(level=19).compress(data))
    print(f"wrote {len(pages)} pages under {WEB_ROOT}, {len(captures)} captures under {ARCHIVE_ROOT} and {DUMP}")


if __name__ == "__main__":
    main()
