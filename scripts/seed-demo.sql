-- Demo "shop" data for the quickstart and for hand testing.
-- Deterministic (no random()): every run builds the same rows, so outputs can be compared.
-- Idempotent: it drops and rebuilds schema `shop`.
--   psql -v ON_ERROR_STOP=1 -d shop -f scripts/seed-demo.sql
--
-- customers 1,000 · products 200 · orders 20,000 · order_items 50,000 · audit_log 5,000
-- (audit_log has no primary key on purpose; the quickstart pipeline excludes it).

\set ON_ERROR_STOP on
SET client_min_messages = warning;

BEGIN;

DROP SCHEMA IF EXISTS shop CASCADE;
CREATE SCHEMA shop;

CREATE TYPE shop.order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled');

CREATE TABLE shop.customers (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text,
    country     char(2),
    created_at  timestamptz NOT NULL,
    vip         boolean NOT NULL DEFAULT false
);

CREATE TABLE shop.products (
    id          int PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    title       text NOT NULL,
    price       numeric(10,2) NOT NULL,
    tags        text[],
    attributes  jsonb,
    weight_kg   real
);

CREATE TABLE shop.orders (
    id           bigint PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES shop.customers (id),
    status       shop.order_status NOT NULL,
    total        numeric(12,2) NOT NULL DEFAULT 0,
    placed_at    timestamptz NOT NULL,
    shipped_on   date,
    note         text,
    external_id  uuid NOT NULL UNIQUE
);
CREATE INDEX orders_customer_id_idx ON shop.orders (customer_id);
CREATE INDEX orders_placed_at_idx ON shop.orders (placed_at);

CREATE TABLE shop.order_items (
    order_id    bigint NOT NULL REFERENCES shop.orders (id) ON DELETE CASCADE,
    product_id  int NOT NULL REFERENCES shop.products (id),
    quantity    int NOT NULL CHECK (quantity > 0),
    unit_price  numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE shop.audit_log (
    id           bigserial,
    happened_at  timestamptz NOT NULL,
    payload      jsonb
);

-- Customers: names mix ASCII, accents, other scripts, an apostrophe and an emoji;
-- every 97th has no name, every 50th no country.
INSERT INTO shop.customers (email, name, country, created_at, vip)
SELECT
    'customer' || g || '@example.com',
    CASE WHEN g % 97 = 0 THEN NULL
         ELSE (ARRAY['Ana', 'José', 'Zoë', 'Łukasz', 'Søren', 'Мария', '李', 'Ayşe',
                     'François', 'Björn', 'Aoife', 'Nguyễn', 'Priya', 'Kwame', 'Ōta', 'Chloé'])[1 + g % 16]
              || ' ' ||
              (ARRAY['Smith', 'García', 'Müller', 'O''Brien', 'Kowalski', 'Иванова', '王',
                     'Yılmaz', 'Dubois', 'Ångström', 'Tanaka', 'Pérez', 'Øvergård', 'Nørby 🐦',
                     'Khan', 'Silva', 'Rossi'])[1 + (g * 7) % 17]
    END,
    CASE WHEN g % 50 = 0 THEN NULL
         ELSE (ARRAY['US', 'DE', 'FR', 'GB', 'PL', 'JP', 'BR', 'IN', 'ES', 'SE', 'NO', 'TR'])[1 + g % 12]
    END,
    timestamptz '2023-01-01 00:00:00+00' + g * interval '7 hours 13 minutes' + (g % 60) * interval '1 second',
    g % 11 = 0
FROM generate_series(1, 1000) AS g
ORDER BY g;

-- Products: some without tags, some with an empty tag array, some without attributes or weight.
INSERT INTO shop.products (id, sku, title, price, tags, attributes, weight_kg)
SELECT
    g,
    'SKU-' || lpad(g::text, 5, '0'),
    (ARRAY['Classic', 'Deluxe', 'Mini', 'Crème', 'Eco', 'Pro', 'Café', 'Nordic', 'Über', 'Smart'])[1 + g % 10]
        || ' ' ||
        (ARRAY['Mug', 'Lamp', 'Backpack', 'Notebook', 'Kettle', 'Chair', 'Scarf', 'Headphones', 'Teapot',
               'Bicycle bell', 'Desk', 'Umbrella', 'Candle'])[1 + (g * 3) % 13]
        || ' #' || g,
    round((((g * 7919) % 49000) / 100.0 + 0.99)::numeric, 2),
    CASE WHEN g % 9 = 0 THEN NULL
         WHEN g % 9 = 1 THEN ARRAY[]::text[]
         ELSE ARRAY[(ARRAY['new', 'sale', 'gift', 'eco', 'bestseller', 'limited'])[1 + g % 6],
                    (ARRAY['home', 'office', 'outdoor', 'kitchen', 'travel'])[1 + g % 5]]
    END,
    CASE WHEN g % 13 = 0 THEN NULL
         ELSE jsonb_build_object(
                  'color', (ARRAY['red', 'green', 'blue', 'black', 'white', 'naturel'])[1 + g % 6],
                  'size', (ARRAY['S', 'M', 'L', 'XL'])[1 + g % 4],
                  'dims_cm', jsonb_build_array(10 + g % 30, 5 + g % 20, 2 + g % 7),
                  'fragile', g % 5 = 0,
                  'origin', CASE WHEN g % 4 = 0 THEN NULL ELSE 'Made in ' || (ARRAY['Portugal', 'Česko', 'Japan'])[1 + g % 3] END)
    END,
    CASE WHEN g % 17 = 0 THEN NULL ELSE ((g % 37) * 0.25 + 0.1)::real END
FROM generate_series(1, 200) AS g;

-- Orders: older ones are mostly shipped, the newest mostly pending.
INSERT INTO shop.orders (id, customer_id, status, placed_at, shipped_on, note, external_id)
SELECT
    g,
    1 + (g * 7919) % 1000,
    s.status,
    s.placed_at,
    CASE WHEN s.status = 'shipped' THEN (s.placed_at AT TIME ZONE 'UTC')::date + 1 + g % 5 END,
    CASE WHEN g % 13 = 0 THEN (ARRAY['Leave at the door', 'Gift wrap — thanks!', 'Bitte klingeln 🔔',
                                      'Livraison après 18h', '配達前に電話してください', ''])[1 + (g / 13) % 6]
    END,
    md5('godwit-order-' || g)::uuid
FROM generate_series(1, 20000) AS g
CROSS JOIN LATERAL (
    SELECT
        timestamptz '2024-01-01 00:00:00+00' + g * interval '26 minutes' + (g % 57) * interval '1 second' AS placed_at,
        (CASE
             WHEN g % 29 = 0 THEN 'cancelled'
             WHEN g > 19500 THEN 'pending'
             WHEN g > 18500 THEN 'paid'
             WHEN g % 7 = 0 THEN 'paid'
             ELSE 'shipped'
         END)::shop.order_status AS status
) AS s;

-- Order items: 1 to 4 distinct products per order (2.5 on average, so 50,000 rows);
-- every 10th line is discounted by 10 %.
INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price)
SELECT
    o.g,
    p.id,
    1 + (o.g / 7 + k) % 5,
    CASE WHEN (o.g / 3 + k) % 10 = 0 THEN round(p.price * 0.9, 2) ELSE p.price END
FROM generate_series(1, 20000) AS o(g)
CROSS JOIN LATERAL generate_series(1, 1 + o.g % 4) AS k
JOIN shop.products AS p ON p.id = 1 + (o.g * 31 + k * 17) % 200;

UPDATE shop.orders AS o
SET total = t.total
FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM shop.order_items GROUP BY order_id) AS t
WHERE t.order_id = o.id;

-- Audit log: no primary key, so no usable replica identity.
INSERT INTO shop.audit_log (happened_at, payload)
SELECT
    timestamptz '2024-01-01 00:00:00+00' + g * interval '104 minutes',
    CASE WHEN g % 25 = 0 THEN NULL
         ELSE jsonb_build_object('event', (ARRAY['login', 'logout', 'price_change', 'refund'])[1 + g % 4],
                                 'customer_id', 1 + (g * 13) % 1000,
                                 'seq', g)
    END
FROM generate_series(1, 5000) AS g;

COMMIT;

ANALYZE shop.customers, shop.products, shop.orders, shop.order_items, shop.audit_log;
