"""redis-py >= 5 against a Redis-compatible server, protocol 2 and 3: commands, pipelines
(transactional and not), pub/sub. Usage: redis_py_check.py PORT"""
import sys
import time

import redis

port = int(sys.argv[1])
assert tuple(int(x) for x in redis.__version__.split(".")[:1]) >= (5,), redis.__version__


def flat(x):
    out = []
    for i in x:
        if isinstance(i, (list, tuple)):
            out.extend(flat(i))
        else:
            out.append(i)
    return out


def wait_message(ps, want_type):
    deadline = time.time() + 10
    while time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] == want_type:
            return m
    raise AssertionError("no %s message" % want_type)


for proto in (2, 3):
    r = redis.Redis(port=port, protocol=proto, decode_responses=True)
    assert r.flushall()
    assert r.ping()
    assert r.echo("hi") == "hi"
    assert r.set("k", "v")
    assert r.get("k") == "v"
    assert r.set("k", "w", nx=True) is None
    assert r.set("k", "w", xx=True, get=True) == "v"
    assert r.getset("k", "z") == "w"
    assert r.append("k", "zz") == 3
    assert r.strlen("k") == 3
    assert r.incr("n") == 1 and r.incrby("n", 10) == 11 and r.decr("n") == 10 and r.decrby("n", 5) == 5
    assert r.mset({"a": "1", "b": "2"})
    assert r.mget("a", "b", "nope") == ["1", "2", None]
    assert r.exists("a", "b", "nope") == 2
    assert r.delete("a", "b") == 2
    assert r.rpush("l", "a", "b", "c") == 3 and r.lpush("l", "z") == 4
    assert r.lrange("l", 0, -1) == ["z", "a", "b", "c"]
    assert r.lpop("l") == "z" and r.rpop("l") == "c" and r.llen("l") == 2
    assert r.sadd("s", "x", "y", "x") == 2 and r.srem("s", "y") == 1 and r.scard("s") == 1
    assert r.smembers("s") == {"x"}
    assert r.spop("s") == "x"
    assert r.hset("h", mapping={"f": "1", "g": "2"}) == 2
    assert r.hget("h", "f") == "1"
    assert r.hgetall("h") == {"f": "1", "g": "2"}
    assert r.hincrby("h", "f", 5) == 6
    assert r.hdel("h", "g") == 1
    assert r.zadd("z", {"a": 1, "b": 2.5}) == 2
    assert r.zcard("z") == 2
    assert flat(r.zrange("z", 0, -1, withscores=True)) == ["a", 1.0, "b", 2.5]
    assert flat(r.zpopmin("z")) == ["a", 1.0]
    assert r.xadd("st", {"f": "v"}, id="1-1") == "1-1"
    assert r.expire("h", 100) and 0 < r.ttl("h") <= 100 and r.pttl("h") > 0
    assert r.persist("h") and r.ttl("h") == -1
    assert r.type("h") == "hash" and r.type("st") == "stream" and r.type("nope") == "none"
    keys = set(r.keys("*"))
    assert keys == {"k", "n", "l", "h", "z", "st"}, keys
    assert set(r.scan_iter(count=2)) == keys
    assert r.dbsize() == 6
    try:
        r.lpush("k", "x")
        raise AssertionError("expected WRONGTYPE")
    except redis.ResponseError as e:
        assert str(e).startswith("WRONGTYPE"), e
    r.set("big", str(2**63 - 1))
    try:
        r.incr("big")
        raise AssertionError("expected overflow")
    except redis.ResponseError as e:
        assert "overflow" in str(e), e
    # Pipelines: MULTI/EXEC and plain.
    p = r.pipeline()
    p.set("t", 1).incr("t").get("t")
    assert p.execute() == [True, 2, "2"]
    p = r.pipeline(transaction=False)
    for _ in range(200):
        p.incr("cnt")
    assert p.execute() == list(range(1, 201))
    assert r.client_setname("py%d" % proto) and r.client_getname() == "py%d" % proto
    assert isinstance(r.client_id(), int)
    assert r.info()["redis_version"]
    assert "save" in r.config_get("save")
    assert r.select(0) if hasattr(r, "select") else True
    # Pub/sub: channels and patterns.
    ps = r.pubsub()
    ps.subscribe("ch")
    wait_message(ps, "subscribe")
    assert r.publish("ch", "hello") == 1
    m = wait_message(ps, "message")
    assert m["channel"] == "ch" and m["data"] == "hello", m
    ps.psubscribe("p*")
    wait_message(ps, "psubscribe")
    assert r.publish("px", "pat") == 1
    m = wait_message(ps, "pmessage")
    assert m["pattern"] == "p*" and m["data"] == "pat", m
    ps.unsubscribe("ch")
    wait_message(ps, "unsubscribe")
    ps.punsubscribe()
    wait_message(ps, "punsubscribe")
    assert r.publish("ch", "nobody") == 0
    ps.close()
    assert r.flushdb()
    r.close()
print("redis-py ok", redis.__version__)
