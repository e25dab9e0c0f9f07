"""Word lists the scene extractor (``extract``) matches lemmas against: places, times of day,
moods, and the words that are never characters or actions. Plain data."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


def _words(text: str) -> list[str]:
    return text.split()


# Nouns that name where a scene happens (matched on the singular).
SETTINGS: frozenset[str] = frozenset(
    _words(
        """
        office study library classroom school university hospital clinic ward church chapel
        cathedral temple castle palace tower dungeon cellar basement attic kitchen bedroom
        bathroom hallway corridor staircase stairwell lobby parlor parlour lounge apartment flat
        house cottage cabin mansion manor farmhouse barn stable shed garage workshop studio
        gallery museum theatre theater cinema restaurant cafe diner bar pub tavern inn hotel
        motel shop store market bazaar bakery bank prison cell courtroom station platform train
        subway airport plane ship boat deck harbour harbor port dock pier quay wharf beach shore
        coast cliff sea ocean lake river bridge canal island forest wood woods jungle meadow
        field farm garden orchard park vineyard desert dune mountain hill valley canyon cave
        glacier tundra swamp marsh street alley road highway avenue square plaza courtyard
        rooftop roof balcony terrace porch yard village town city metropolis suburb downtown
        camp battlefield trench ruins graveyard cemetery crypt laboratory lab warehouse factory
        mill mine spaceship cockpit bunker tent car taxi bus elevator lighthouse observatory
        arena stadium gym pool
        """
    )
)

# Times of day and what they read as in a prompt.
TIMES: Mapping[str, str] = MappingProxyType(
    {
        "dawn": "dawn",
        "daybreak": "dawn",
        "sunrise": "sunrise",
        "morning": "morning",
        "noon": "noon",
        "midday": "noon",
        "afternoon": "afternoon",
        "dusk": "dusk",
        "sunset": "sunset",
        "twilight": "twilight",
        "evening": "evening",
        "night": "night",
        "nighttime": "night",
        "midnight": "midnight",
        "moonlight": "night",
        "tonight": "night",
    }
)

# Words (lemmas) that set a mood, by the mood they set.
MOODS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "tense": frozenset(
            _words(
                """
        fear afraid dread terror terrified panic anxious anxiety nervous tense tension threat
        danger dangerous worry worried uneasy scream tremble shake shiver hide chase flee
        """
            )
        ),
        "melancholy": frozenset(
            _words(
                """
        sad sadness grief grieve tear cry weep sob mourn lonely alone loss lost sorrow regret
        funeral empty
        """
            )
        ),
        "joyful": frozenset(
            _words(
                """
        happy happiness joy joyful laugh laughter smile grin delight cheer celebrate celebration
        dance party bright
        """
            )
        ),
        "angry": frozenset(
            _words(
                """
        anger angry rage furious fury shout yell slam glare argue argument hate
        """
            )
        ),
        "calm": frozenset(
            _words(
                """
        calm quiet peaceful peace still gentle soft serene rest relax sleep
        """
            )
        ),
        "mysterious": frozenset(
            _words(
                """
        mystery mysterious strange secret shadow whisper hidden unknown fog mist ghost eerie
        """
            )
        ),
        "romantic": frozenset(
            _words(
                """
        love kiss embrace romance romantic tender caress
        """
            )
        ),
        "dramatic": frozenset(
            _words(
                """
        storm thunder lightning crash explode explosion fire burn blood fight battle war
        """
            )
        ),
    }
)

# Capitalised words that are not characters: pronouns, articles, days, titles, headings …
NOT_NAMES: frozenset[str] = frozenset(
    _words(
        """
        i me my mine he him his she her hers it its we us our they them their you your the a an
        this that these those there here then when where what who why how and but or so yet if
        as at in on of to by for from with after before while once chapter part book scene act
        prologue epilogue interlude monday tuesday wednesday thursday friday saturday sunday
        january february march april may june july august september october november december mr
        mrs ms miss dr sir madam lord lady captain god yes no oh okay ok hey
        """
    )
)

# Titles that belong to the name they precede ("Dr Quinn", "Captain Hale").
TITLES: frozenset[str] = frozenset(
    _words(
        """
        mr mrs ms miss dr doctor sir lady lord captain detective professor inspector
        """
    )
)

# Verbs (lemmas) that say little about what is shown: never the scene's action.
LIGHT_VERBS: frozenset[str] = frozenset(
    _words(
        """
        be have do get seem become can could will would shall should may might must let make go
        come know think feel want need begin start try keep say tell ask
        """
    )
)

# Words after which the next word is not a verb (determiners, possessives, prepositions).
NOT_BEFORE_VERB: frozenset[str] = frozenset(
    _words(
        """
        the a an this that these those my your his her its our their some any every each no of
        in on at into onto over under with without for from by about through across
        """
    )
)

# Words after which a base or -s form is a verb (subjects, auxiliaries, "to").
SUBJECTS: frozenset[str] = frozenset(
    _words(
        """
        i he she it we they you who to will would can could must should might may
        """
    )
)

# Where an object phrase ends.
PHRASE_ENDS: frozenset[str] = frozenset(
    _words(
        """
        and but or as while when then because though although so if that which who before after
        until again
        """
    )
)

PLACE_PREPOSITIONS: frozenset[str] = frozenset(
    _words(
        """
        in at into inside near across
        """
    )
)
