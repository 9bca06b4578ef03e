-- wrk's request for bench/handlers/realistic.js: an order of three items,
-- posted as JSON (scripts/bench.py, "a realistic handler").
wrk.method = "POST"
wrk.path = "/api/orders"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"customer":"customer-42","items":[{"sku":"A-100","price":12.5,"qty":2},{"sku":"B-220","price":3.99,"qty":5},{"sku":"C-007","price":149,"qty":1}]}'
