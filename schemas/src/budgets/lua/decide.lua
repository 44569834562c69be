-- Set or clear one decision of a scope.
-- KEYS[1]: the scope's decision hash.
-- ARGV[1]: field (budget id); ARGV[2]: decision JSON ('' = clear); ARGV[3]: window end
-- (Unix ms, 0 = never); ARGV[4]: notice channel; ARGV[5]: notice (the scope ref).
-- Returns 1 when something changed (and the notice was published), else 0.
return decide(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
