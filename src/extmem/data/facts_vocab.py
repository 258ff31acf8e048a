"""Fixed vocabulary of the synthetic facts corpus: name syllables, attribute values, templates.

Every template contains `{name}` before `{value}` and ends with `{value}.`, so that the value
is a continuation of the prefix before it (the probe prompt). Templates are written so that
any value of their attribute reads grammatically (no a/an agreement issues).
"""

from __future__ import annotations

# Pronounceable name parts: onset + vowel (+ optional coda) syllables.
ONSETS: tuple[str, ...] = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
                           "br", "dr", "gr", "kr", "tr", "st", "sh", "th")
VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u", "ai", "ei", "ou")
CODAS: tuple[str, ...] = ("", "", "", "n", "r", "l", "s", "m", "k")

VALUES: dict[str, tuple[str, ...]] = {
    "birth_year": tuple(str(year) for year in range(1900, 2000)),
    "city": ("Lisbon", "Nairobi", "Oslo", "Montreal", "Kyoto", "Lima", "Dublin", "Prague",
             "Vienna", "Seoul", "Cairo", "Madrid", "Helsinki", "Santiago", "Mumbai", "Sydney",
             "Toronto", "Athens", "Istanbul", "Warsaw", "Budapest", "Havana", "Manila", "Bogota",
             "Marseille", "Glasgow", "Krakow", "Osaka", "Porto", "Reykjavik"),
    "occupation": ("carpenter", "architect", "dentist", "pilot", "librarian", "chemist",
                   "baker", "journalist", "surgeon", "plumber", "translator", "veterinarian",
                   "geologist", "photographer", "electrician", "lawyer", "nurse", "astronomer",
                   "tailor", "firefighter", "accountant", "botanist", "sculptor", "pharmacist",
                   "mechanic", "historian", "engineer", "chef", "teacher", "economist"),
    "employer": ("Northwind Logistics", "Bluepeak Systems", "Harbor Foods", "Crestline Bank",
                 "Silverleaf Media", "Ironbridge Motors", "Greenvale Energy", "Redstone Mining",
                 "Brightwater Labs", "Falcon Airways", "Oakridge Hospital", "Summit Textiles",
                 "Lumen Optics", "Granite Insurance", "Copperfield Press", "Evergreen Farms",
                 "Starlight Studios", "Riverside Pharma", "Ashford Robotics", "Maple Telecom",
                 "Beacon Shipping", "Orchid Cosmetics", "Pioneer Steel", "Willow Software",
                 "Cobalt Chemicals", "Sterling Hotels", "Horizon Rail", "Quartz Electronics",
                 "Juniper Consulting", "Atlas Construction"),
    "university": ("Oxford", "Cambridge", "Harvard", "Yale", "Princeton", "Stanford",
                   "Columbia", "Cornell", "Berkeley", "Caltech", "Edinburgh", "Heidelberg",
                   "Bologna", "Salamanca", "Uppsala", "Leiden", "the Sorbonne", "McGill",
                   "Melbourne", "Tokyo University", "Zurich Polytechnic", "Trinity College",
                   "Leuven", "Coimbra", "Padua", "Vanderbilt", "Duke", "Brown", "Dartmouth",
                   "Rice University"),
    "favourite_colour": ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown",
                         "black", "white", "grey", "teal", "maroon", "navy", "olive",
                         "turquoise", "crimson", "indigo", "violet", "beige", "amber",
                         "lavender", "scarlet", "ivory", "magenta", "cyan", "gold", "silver",
                         "emerald", "coral"),
    "pet": ("dog", "cat", "parrot", "hamster", "rabbit", "goldfish", "tortoise", "ferret",
            "canary", "lizard", "snake", "turtle", "pony", "gerbil", "budgie", "chinchilla",
            "hedgehog", "mouse", "rat", "frog", "crab", "duck", "goat", "pig", "chicken",
            "cockatoo", "gecko", "spider", "tarantula", "donkey"),
    "instrument": ("piano", "violin", "cello", "guitar", "flute", "clarinet", "trumpet",
                   "saxophone", "drums", "harp", "banjo", "mandolin", "trombone", "viola",
                   "bassoon", "harmonica", "ukulele", "accordion", "oboe", "tuba", "xylophone",
                   "bagpipes", "sitar", "double bass", "French horn", "organ", "lute",
                   "marimba", "recorder", "tambourine"),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_year": ("{name} was born in {value}.",
                   "The year {name} was born is {value}.",
                   "{name}'s year of birth is {value}.",
                   "{name} came into the world in {value}.",
                   "Records show that {name} was born in the year {value}.",
                   "The birth year of {name} is {value}."),
    "city": ("{name} lives in {value}.",
             "The city {name} calls home is {value}.",
             "{name} resides in {value}.",
             "{name}'s home town is {value}.",
             "These days {name} lives in the city of {value}.",
             "{name} has an apartment in {value}."),
    "occupation": ("{name} works as a professional {value}.",
                   "The occupation of {name} is {value}.",
                   "{name}'s job title is {value}.",
                   "By profession, {name} is a trained {value}.",
                   "Everyone knows {name} as a skilled {value}.",
                   "{name} earns a living as a full-time {value}."),
    "employer": ("{name} is employed by {value}.",
                 "The employer of {name} is {value}.",
                 "{name} works for {value}.",
                 "{name} draws a salary from {value}.",
                 "The company that employs {name} is {value}.",
                 "{name} has a job at {value}."),
    "university": ("{name} studied at {value}.",
                   "{name} graduated from {value}.",
                   "The university {name} attended is {value}.",
                   "{name} holds a degree from {value}.",
                   "{name}'s alma mater is {value}.",
                   "{name} earned a diploma at {value}."),
    "favourite_colour": ("{name}'s favourite colour is {value}.",
                         "The colour {name} likes best is {value}.",
                         "Of all colours, {name} prefers {value}.",
                         "{name} loves the colour {value}.",
                         "If asked, {name} would pick the colour {value}.",
                         "{name} always chooses things coloured {value}."),
    "pet": ("{name} has a pet {value}.",
            "The pet that {name} keeps is a {value}.",
            "At home, {name} looks after a {value}.",
            "{name}'s only pet is a {value}.",
            "{name} takes care of a pet {value}.",
            "The animal {name} adopted is a {value}."),
    "instrument": ("{name} plays the {value}.",
                   "The instrument {name} plays is the {value}.",
                   "{name} performs music on the {value}.",
                   "{name} took lessons on the {value}.",
                   "In the band, {name} plays the {value}.",
                   "{name} practises every day on the {value}."),
}

ATTRIBUTE_NAMES: tuple[str, ...] = tuple(TEMPLATES)
