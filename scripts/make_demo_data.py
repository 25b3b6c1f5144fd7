"""Writes data/demo/memories.jsonl: three agents' memories, deterministic (seeded).

Run `python scripts/make_demo_data.py` after editing the texts below.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "demo" / "memories.jsonl"
END = 1_795_564_800.0  # 2026-11-25T00:00:00Z: memories span the 60 days before
DAY = 86_400.0

AGENTS: dict[str, dict[str, list[str] | list[tuple[str, str]]]] = {
    "travel-concierge:maya": {
        "long_term_memory": [
            "Maya prefers aisle seats on flights longer than two hours.",
            "Maya is vegetarian and does not eat fish or seafood.",
            "Maya gets anxious on small propeller planes and avoids them when possible.",
            "Maya's frequent flyer number is with TAP Air Portugal, Miles&Go gold tier.",
            "Maya travels with a carry-on only and hates checking luggage.",
            "Maya's partner Luis is allergic to cats, so no Airbnbs with pets.",
            "Maya works remotely and needs reliable wifi of at least 50 Mbps at every stay.",
            "Maya's budget for hotels is around 180 euros per night in Europe.",
            "Maya loves walking tours, bookshops and small design museums.",
            "Maya dislikes guided bus tours and large tourist groups.",
            "Maya is planning a trip to Lisbon in March with Luis for their anniversary.",
            "Maya wants to visit Kyoto during the autumn foliage season next year.",
            "Maya's passport expires in August 2027.",
            "Maya prefers trains to flights for trips under five hours in Europe.",
            "Maya is learning Portuguese and likes practising with locals.",
            "Maya has a Global Entry membership for faster US border control.",
            "Maya's home airport is Amsterdam Schiphol.",
            "Maya gets motion sick on ferries and long winding bus rides.",
            "Maya likes boutique hotels with a rooftop or garden.",
            "Maya prefers to land before 9 pm so she can check in calmly.",
            "Luis is a keen photographer and wants sunrise viewpoints on every trip.",
            "Maya's travel insurance is an annual policy with Allianz Travel.",
            "Maya took a trip to Porto last spring and loved the Livraria Lello bookshop.",
            "Maya does not drink alcohol but enjoys specialty coffee bars.",
            "Maya prefers window-facing desks in hotel rooms for her video calls.",
        ],
        "procedural_memory": [
            "When booking flights for Maya, filter out turboprop aircraft and show jet-only options.",
            "Before suggesting a hotel, check the listed wifi speed and recent reviews about it.",
            "For anniversary trips, suggest one special dinner at a vegetarian tasting menu.",
            "Always compare the train option when a European flight is under five hours door to door.",
            "When Maya asks for restaurants, list vegetarian places first and mark vegan options.",
            "Confirm passport validity of at least six months beyond the return date before booking.",
            "For Japan trips, remind Maya to buy a Suica card and check the JR pass price.",
            "Hold bookings for 24 hours and ask for confirmation before paying.",
            "Send the final itinerary as a day-by-day list with addresses and opening hours.",
            "For early flights, suggest a hotel near the airport the night before.",
            "When rebooking after a cancellation, prioritise arrival time over price.",
            "Check whether accommodation allows pets; exclude places with resident cats.",
            "For city breaks, cluster sights by neighbourhood to keep walking distances short.",
            "Add sunrise viewpoints near the hotel for Luis to every itinerary.",
            "When the budget is exceeded, offer two cheaper alternatives with trade-offs explained.",
        ],
        "conversation_memory": [
            (
                "Can you find us flights to Lisbon for the second week of March?",
                "I found three direct TAP flights from Amsterdam, all on A320 jets, aisle seats available.",
            ),
            (
                "We'd like a hotel in Alfama with a view.",
                "Memmo Alfama has a rooftop terrace and river views, at 175 euros per night.",
            ),
            (
                "Is the wifi good at Memmo Alfama?",
                "Recent reviews mention around 100 Mbps and a quiet work lounge.",
            ),
            (
                "What should we do on our anniversary evening?",
                "I suggest the vegetarian tasting menu at Arkhe, then a walk to the Miradouro da Graca.",
            ),
            (
                "Luis wants a sunrise spot near the hotel.",
                "Miradouro de Santa Luzia is a five-minute walk and faces east over the river.",
            ),
            (
                "Can we do a day trip to Sintra without a bus tour?",
                "Yes, take the train from Rossio station; it takes 40 minutes and runs every 20 minutes.",
            ),
            (
                "Are there good bookshops in Lisbon?",
                "Bertrand in Chiado is the oldest operating bookshop in the world, and Ler Devagar is in LX Factory.",
            ),
            (
                "Any specialty coffee near Alfama?",
                "Copenhagen Coffee Lab and Fabrica Coffee Roasters are both within 15 minutes walk.",
            ),
            (
                "Our flight home got cancelled, what now?",
                "I rebooked you on the next TAP flight landing at 18:40, the earliest arrival available.",
            ),
            (
                "How do we get from Lisbon airport to the hotel?",
                "The metro red line to Alameda then green line takes 35 minutes; a taxi is about 20 euros.",
            ),
            (
                "Could we add Porto for two days?",
                "The Alfa Pendular train from Lisbon to Porto takes under three hours, cheaper and calmer than flying.",
            ),
            (
                "Any vegetarian restaurants in Porto?",
                "Da Terra and Essencia are fully vegetarian; Em Carne Viva does vegetarian Portuguese classics.",
            ),
            (
                "Remind me what we loved in Porto last time.",
                "You loved Livraria Lello and the walk along the Douro at sunset.",
            ),
            (
                "I'd like to start planning Kyoto for next November.",
                "Great, peak foliage is usually mid to late November; I'll watch ryokan availability.",
            ),
            (
                "Which area in Kyoto should we stay in?",
                "Higashiyama is walkable to temples and quieter in the evening than Gion's main streets.",
            ),
            (
                "How do we get from Osaka Kansai to Kyoto?",
                "The Haruka express train takes about 75 minutes directly to Kyoto Station.",
            ),
            (
                "Should we get a JR pass for Japan?",
                "For Kyoto plus one day trip to Nara, single tickets with a Suica card are cheaper than the JR pass.",
            ),
            (
                "Can you suggest a vegetarian meal in Kyoto?",
                "Shigetsu at Tenryu-ji serves Buddhist shojin ryori, fully vegetarian.",
            ),
            (
                "What about a ryokan with no cats or pets?",
                "Hiiragiya has no animals on site and offers vegetarian kaiseki on request.",
            ),
            (
                "Is there a ferry to Naoshima from Kyoto?",
                "You'd take the train to Uno then a 20-minute ferry; given motion sickness, pick a calm morning crossing.",
            ),
            (
                "My passport situation for Japan?",
                "Your passport is valid until August 2027, which covers a November 2026 trip.",
            ),
            (
                "Can you check trains from Amsterdam to Paris for a weekend?",
                "The Eurostar takes 3 hours 20 minutes; flights are not faster door to door.",
            ),
            (
                "Hotel in Paris under budget near bookshops?",
                "Hotel des Grands Hommes near the Pantheon is 170 euros per night, close to Shakespeare and Company.",
            ),
            (
                "I have a work call Friday morning in Paris.",
                "I picked a room with a window desk and confirmed 80 Mbps wifi with the hotel.",
            ),
            (
                "Please send the final Lisbon itinerary.",
                "Sent: day-by-day plan with addresses, opening hours and two sunrise viewpoints.",
            ),
        ],
    },
    "code-copilot:devon": {
        "long_term_memory": [
            "Devon's main project is a FastAPI service called ledgerly backed by PostgreSQL 16.",
            "Devon's team uses Python 3.12, ruff, mypy strict and pytest.",
            "Devon prefers small pull requests of under 300 changed lines.",
            "Devon's repository uses conventional commits for commit messages.",
            "The ledgerly service deploys to Kubernetes with Helm charts through Argo CD.",
            "Devon dislikes ORMs and writes SQL with psycopg 3 and plain queries.",
            "Migrations in ledgerly are managed with Alembic, one migration per pull request.",
            "Devon's CI runs on GitHub Actions with a matrix of Python 3.11 and 3.12.",
            "Devon is the on-call engineer every fourth week.",
            "Devon's editor is Neovim with the pyright language server.",
            "The ledgerly API must keep p99 latency under 150 ms for the /balances endpoint.",
            "Devon's team stores secrets in HashiCorp Vault, never in environment files.",
            "Devon wants docstrings that explain why, not what.",
            "The ledgerly database has a large table journal_entries with 400 million rows.",
            "Devon is migrating background jobs from Celery to a RabbitMQ-based worker.",
            "Devon's code review checklist emphasises tests for every bug fix.",
            "Devon prefers structlog for logging with JSON output in production.",
            "The staging environment is reset every Sunday night.",
            "Devon's team lead is Priya, who approves schema changes.",
            "Devon uses uv to manage virtual environments locally.",
            "Ledgerly uses money amounts as integer cents, never floats.",
            "Devon is learning Rust in the evenings for a side project.",
            "Ledgerly's feature flags live in LaunchDarkly.",
            "Devon's timezone is Europe/Berlin.",
            "Devon prefers explicit type hints over inferred types in public functions.",
        ],
        "procedural_memory": [
            "To release ledgerly: bump the version, update CHANGELOG.md, tag vX.Y.Z, and let Argo CD sync.",
            "For a slow query, run EXPLAIN (ANALYZE, BUFFERS) and check for sequential scans on journal_entries.",
            "Add an index concurrently in production: CREATE INDEX CONCURRENTLY in its own migration.",
            "When a test is flaky, quarantine it with a marker and open an issue before merging.",
            "To debug a pod, use kubectl logs with --previous after a crash loop.",
            "Rotate database credentials through Vault's dynamic secrets, never by hand.",
            "For a hotfix, branch from the release tag, fix, tag a patch version, and cherry-pick to main.",
            "Review a pull request by running the tests locally and reading the migration first.",
            "When on call, acknowledge the page within five minutes and post in #incidents.",
            "Write a regression test that fails before the fix and passes after it.",
            "Use pytest -x --lf to rerun only the last failing tests while debugging.",
            "To profile an endpoint, run py-spy record against the uvicorn worker for 30 seconds.",
            "When adding a dependency, check its licence and pin it in requirements with hashes.",
            "Backfills on journal_entries must run in batches of 10,000 rows with a sleep between.",
            "Before merging a schema change, get Priya's approval on the migration.",
        ],
        "conversation_memory": [
            (
                "The /balances endpoint got slow after yesterday's deploy.",
                "The new query scans journal_entries; an index on (account_id, posted_at) should fix it.",
            ),
            (
                "Can you write the migration for that index?",
                "Here's an Alembic migration using CREATE INDEX CONCURRENTLY outside a transaction.",
            ),
            (
                "CI fails on Python 3.11 only.",
                "The code uses typing.override, which is new in 3.12; import it from typing_extensions.",
            ),
            (
                "How should I structure the RabbitMQ consumer?",
                "Use aio-pika with a robust connection, per-consumer prefetch, and ack after the work commits.",
            ),
            (
                "What prefetch should the worker use?",
                "Start with twice your batch size so batches are never capped by prefetch.",
            ),
            (
                "The worker died and messages were stuck.",
                "Unacked messages return to the queue when the channel closes; check the consumer timeout too.",
            ),
            (
                "Should we use quorum queues?",
                "Yes for the work queues: durable and replicated; set an explicit delivery limit and dead-lettering.",
            ),
            (
                "How do I test the consumer without mocks?",
                "Run against a real RabbitMQ from testcontainers or the local server, with a per-test queue prefix.",
            ),
            (
                "Ruff complains about a long line in a SQL string.",
                "Split the SQL into a parenthesised multi-line string; ruff won't flag implicit concatenation.",
            ),
            (
                "The Helm chart fails to render.",
                "The values file uses a list where the template expects a map for env; change it to key-value pairs.",
            ),
            (
                "Pod is crash looping in staging.",
                "kubectl logs --previous shows a missing VAULT_ROLE; staging was reset on Sunday.",
            ),
            (
                "Can we store amounts as Decimal?",
                "Ledgerly stores integer cents; convert at the API boundary and keep integers inside.",
            ),
            (
                "mypy says Returning Any from function declared to return int.",
                "Wrap the psycopg fetchone result with an explicit cast or validate its type first.",
            ),
            (
                "How to speed up the test suite?",
                "Run pytest with xdist, and reuse one database per worker with transactions rolled back per test.",
            ),
            (
                "I need a hotfix for the rounding bug.",
                "Branch from v2.14.0, add the regression test, fix, and tag v2.14.1.",
            ),
            (
                "Should I squash commits?",
                "Squash to one conventional commit per pull request, as the team's guide says.",
            ),
            (
                "What's the best way to log request ids?",
                "Bind the request id into structlog's contextvars at the start of each request.",
            ),
            (
                "How do we roll out the new worker safely?",
                "Put it behind a LaunchDarkly flag and shift queues one at a time.",
            ),
            (
                "The backfill is locking the table.",
                "Run it in batches of 10,000 rows with a short pause and commit per batch.",
            ),
            (
                "Explain async PyMongo vs Motor.",
                "Motor is deprecated; PyMongo's AsyncMongoClient has the same API and is the maintained successor.",
            ),
            (
                "I'm on call this week, anything to know?",
                "The journal_entries index build finished; watch the disk alerts on the primary.",
            ),
            (
                "Can you review my pull request on the balances cache?",
                "The migration looks safe; please add a test for cache invalidation on new entries.",
            ),
            (
                "Is uv compatible with our requirements files?",
                "Yes, uv pip sync reads requirements with hashes and is much faster than pip.",
            ),
            (
                "How do I profile memory in the worker?",
                "Use tracemalloc snapshots or memray run on a reproduction script.",
            ),
            (
                "Any Rust resources for a Python developer?",
                "The Rust Book plus PyO3's guide for writing Python extensions in Rust.",
            ),
        ],
    },
    "health-coach:sam": {
        "long_term_memory": [
            "Sam is training for a half marathon in April with a goal time under 1 hour 55.",
            "Sam is allergic to peanuts and carries an epinephrine pen.",
            "Sam had a right knee injury (patellar tendinopathy) two years ago.",
            "Sam works night shifts as a nurse three days a week.",
            "Sam prefers running in the early evening before shifts.",
            "Sam's resting heart rate is around 56 beats per minute.",
            "Sam dislikes protein shakes and prefers whole-food snacks.",
            "Sam is lactose intolerant but tolerates hard cheese and yoghurt.",
            "Sam's weekly mileage is currently 35 kilometres.",
            "Sam wants to lose about three kilograms before race day.",
            "Sam sleeps poorly after night shifts and naps in the afternoon.",
            "Sam loves Mediterranean food, especially lentils, chickpeas and grilled vegetables.",
            "Sam's gym has a rowing machine and free weights but no pool.",
            "Sam ran a 10k in 52 minutes last autumn.",
            "Sam drinks two coffees a day and none after 2 pm on day shifts.",
            "Sam uses a Garmin watch and shares runs through Strava.",
            "Sam's physiotherapist recommended eccentric squats for the knee.",
            "Sam cooks in batches on Sundays for the week.",
            "Sam gets iron deficiency occasionally and takes a supplement in winter.",
            "Sam does not like running on treadmills.",
            "Sam's partner Alex cycles and sometimes joins long runs on a bike.",
            "Sam meditates for ten minutes after night shifts to wind down.",
            "Sam's race is the Rotterdam half marathon on April 12th.",
            "Sam prefers plant-based protein sources most days.",
            "Sam had mild shin splints when increasing mileage too fast last year.",
        ],
        "procedural_memory": [
            "Increase Sam's weekly mileage by at most ten percent per week.",
            "Check every meal suggestion for peanuts and peanut oil before sending it.",
            "After a night shift, schedule only an easy recovery run or rest.",
            "Include eccentric squats and calf raises twice a week for knee health.",
            "Plan a cutback week with 30 percent less volume every fourth week.",
            "For long runs, suggest carbohydrate intake of 30 to 60 grams per hour.",
            "When Sam reports knee pain above 3 out of 10, replace the next run with rowing.",
            "Suggest lactose-free or hard-cheese options in recipes with dairy.",
            "Build weekly meal plans around batch cooking on Sundays.",
            "Taper volume by 40 percent in the two weeks before the race.",
            "Use heart rate zone 2 for easy runs, about 135 to 148 bpm for Sam.",
            "Ask about sleep quality before scheduling an interval session.",
            "Give snack ideas with whole foods instead of shakes or bars.",
            "Log weekly weight trends, not daily fluctuations, to avoid discouragement.",
            "For intervals, warm up 15 minutes and cool down 10 minutes.",
        ],
        "conversation_memory": [
            (
                "I have a 14k long run Saturday, what should I eat before?",
                "Oats with banana and honey two hours before; skip anything with peanut butter.",
            ),
            (
                "My knee hurts a bit after the hills, like 4 out of 10.",
                "Let's swap tomorrow's run for 40 minutes on the rower and do eccentric squats.",
            ),
            (
                "What's a good post-shift snack?",
                "Greek yoghurt with berries and pumpkin seeds, easy to digest before sleep.",
            ),
            (
                "Can you make a lentil recipe for Sunday batch cooking?",
                "Red lentil and sweet potato dal with spinach; makes four portions and freezes well.",
            ),
            (
                "I slept four hours after my shift, intervals today?",
                "No intervals today; do an easy 30-minute zone 2 run or rest.",
            ),
            (
                "How fast should my easy runs be?",
                "Keep heart rate between 135 and 148 bpm; pace will follow, probably around 6:15 per km.",
            ),
            (
                "Can Alex join my long run?",
                "Yes, Alex can cycle alongside and carry your gels and water.",
            ),
            (
                "I want to hit 40k per week.",
                "We'll go from 35 to 38 next week and 40 the week after, within the ten percent rule.",
            ),
            (
                "What gels are peanut free?",
                "Maurten and SIS gels list no peanut ingredients; check the labels for cross-contamination notes.",
            ),
            (
                "My shins feel tight.",
                "Reduce mileage this week, add calf raises, and check your shoes have under 600 km on them.",
            ),
            (
                "I weighed more today than yesterday.",
                "Daily weight swings are normal; the weekly trend is down 0.4 kg, which is on track.",
            ),
            (
                "Give me a Mediterranean dinner idea.",
                "Chickpea and roasted vegetable tray bake with feta, which is usually fine for lactose intolerance.",
            ),
            ("When is my next cutback week?", "Week 8 is a cutback week at about 30 km."),
            (
                "What's my race plan for Rotterdam?",
                "Start at 5:35 per km for the first 10k, then push to 5:25 if you feel good.",
            ),
            (
                "I'm low on energy lately.",
                "It might be iron; it's winter, so restart your supplement and add lentils and spinach.",
            ),
            (
                "Can I do intervals on the treadmill?",
                "You dislike treadmills; do 6 x 800 m on the track with 400 m jog recovery instead.",
            ),
            (
                "How much coffee before a morning race?",
                "One coffee about an hour before is fine, you're used to it.",
            ),
            (
                "What should I do after a night shift to sleep?",
                "Meditate ten minutes, dark room, and keep the nap under 90 minutes.",
            ),
            (
                "Plan my taper please.",
                "Two weeks out: 40 percent less volume, keep one short session at race pace.",
            ),
            (
                "Snack ideas that aren't bars?",
                "Dates with almonds, rice cakes with honey, or a banana with yoghurt.",
            ),
            (
                "How did my 10k time compare to my goal?",
                "Your 52-minute 10k predicts about 1:55 for the half with good training.",
            ),
            (
                "Should I row on recovery days?",
                "Yes, 20 to 30 minutes of easy rowing is good low-impact cross-training for the knee.",
            ),
            (
                "Can I eat satay at a work dinner?",
                "No: satay sauce is peanut-based. Ask for grilled skewers without sauce.",
            ),
            (
                "How many carbs during my long run?",
                "Aim for 30 to 60 grams per hour, roughly one gel every 30 to 40 minutes.",
            ),
            (
                "My Garmin says training status unproductive.",
                "It's likely the night shifts affecting recovery; the trend over four weeks matters more.",
            ),
        ],
    },
}

TAGS = {
    "travel-concierge:maya": ["travel", "preferences", "booking"],
    "code-copilot:devon": ["engineering", "ledgerly", "workflow"],
    "health-coach:sam": ["training", "nutrition", "recovery"],
}


def main() -> None:
    rng = random.Random(20261125)
    lines = []
    for memory_id, kinds in AGENTS.items():
        for memory_type, items in kinds.items():
            for index, item in enumerate(items):
                turns = item if isinstance(item, tuple) else (item,)
                base = END - rng.uniform(1, 60) * DAY
                for turn, text in enumerate(turns):
                    role = (
                        ("user", "assistant")[turn]
                        if memory_type == "conversation_memory"
                        else None
                    )
                    importance = {
                        "long_term_memory": rng.uniform(0.5, 0.95),
                        "procedural_memory": rng.uniform(0.6, 0.9),
                        "conversation_memory": rng.uniform(0.2, 0.5),
                    }[memory_type]
                    record = {
                        "id": f"{memory_id.split(':')[1]}-{memory_type.split('_')[0]}-{index:03d}-{turn}",
                        "memory_id": memory_id,
                        "memory_type": memory_type,
                        "content": text,
                        "timestamp": round(base + turn * 30.0, 3),
                        "role": role,
                        "importance": round(importance, 3),
                        "situational_tags": [TAGS[memory_id][index % 3]],
                    }
                    lines.append(json.dumps({k: v for k, v in record.items() if v is not None}))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} memories to {OUT}")


if __name__ == "__main__":
    main()
