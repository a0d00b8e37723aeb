#!/usr/bin/env python3
"""Write the stage 4 exercise data: a day of nginx access log or a sales CSV.

Usage: gen_text_data.py access-log|sales OUTFILE SEED COUNT

The output depends only on SEED and COUNT, so every learner gets the same
files. The busiest clients get fixed, distinct request counts so that the
top-10 report has exactly one right answer.
"""
import random
import sys

DAY = "14/Mar/2026"
CSV_DATE = "2026-03-"
HEAVY_CLIENT_COUNTS = (412, 377, 341, 306, 288, 251, 230, 204, 187, 163, 149, 131)
HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 3, 5, 8, 10, 11, 11, 10, 11, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3)
STATUS_WEIGHTS = {
    200: 720, 304: 60, 301: 30, 404: 90, 403: 15, 400: 15,
    500: 20, 502: 20, 503: 15, 504: 15,
}
PATHS = (
    "/", "/index.html", "/about", "/products", "/products/42", "/products/317",
    "/cart", "/checkout", "/api/orders", "/api/orders/1187", "/api/stock?sku=A-100",
    "/api/login", "/static/app.js", "/static/app.css", "/static/logo.png",
    "/favicon.ico", "/robots.txt", "/search?q=linux", "/search?q=awk+sed",
)
POST_PATHS = ("/api/login", "/api/orders", "/checkout")
REFERERS = ("-", "https://shop.lab.internal/", "https://shop.lab.internal/products",
            "https://www.example.com/search")
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "curl/7.88.1",
    "python-requests/2.31.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
)
PRODUCTS = {"keyboard": 49, "mouse": 19, "monitor": 189, "headset": 79, "webcam": 59, "dock": 129}
REGIONS = ("north", "south", "east", "west", "central")


def random_ip(rng):
    """An IPv4 address from a few realistic client networks."""
    first = rng.choice((31, 46, 77, 85, 93, 109, 151, 178, 185, 203))
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def client_sequence(rng, count):
    """COUNT client addresses: the heavy clients with their fixed counts, the rest light."""
    heavy = []
    while len(heavy) < len(HEAVY_CLIENT_COUNTS):
        ip = random_ip(rng)
        if ip not in heavy:
            heavy.append(ip)
    clients = [ip for ip, n in zip(heavy, HEAVY_CLIENT_COUNTS) for _ in range(n)]
    light = [ip for ip in (random_ip(rng) for _ in range(500)) if ip not in heavy]
    clients += [rng.choice(light) for _ in range(max(count - len(clients), 0))]
    rng.shuffle(clients)
    return clients[:count]


def timestamps(rng, count):
    """COUNT sorted seconds of the day, busier in office hours."""
    hours = rng.choices(range(24), weights=HOUR_WEIGHTS, k=count)
    return sorted(h * 3600 + rng.randrange(3600) for h in hours)


def request_line(rng, second, ip):
    """One log line in nginx's combined format."""
    status = rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]
    path = rng.choice(PATHS)
    method = "POST" if path in POST_PATHS and rng.random() < 0.5 else "GET"
    size = 0 if status == 304 else rng.randint(150, 48000)
    stamp = f"{DAY}:{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d} +0000"
    return (f'{ip} - - [{stamp}] "{method} {path} HTTP/1.1" {status} {size} '
            f'"{rng.choice(REFERERS)}" "{rng.choice(AGENTS)}"')


def access_log(rng, count):
    """The whole access log as a list of lines."""
    clients = client_sequence(rng, count)
    return [request_line(rng, second, ip) for second, ip in zip(timestamps(rng, count), clients)]


def sales(rng, count):
    """A sales CSV with a header line: date,region,product,units,unit_price."""
    rows = ["date,region,product,units,unit_price"]
    for _ in range(count):
        product = rng.choice(list(PRODUCTS))
        rows.append(f"{CSV_DATE}{rng.randint(1, 31):02d},{rng.choice(REGIONS)},{product},"
                    f"{rng.randint(1, 20)},{PRODUCTS[product]}")
    return rows


GENERATORS = {"access-log": access_log, "sales": sales}


def main(argv):
    """Parse the arguments and write the file."""
    if len(argv) != 5 or argv[1] not in GENERATORS:
        sys.stderr.write(f"usage: {argv[0]} access-log|sales OUTFILE SEED COUNT\n")
        return 2
    lines = GENERATORS[argv[1]](random.Random(int(argv[3])), int(argv[4]))
    with open(argv[2], "w", encoding="ascii") as out:
        out.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
