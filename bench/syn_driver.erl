%% The bench's driver for Erlang Syn (the bench's own code: no Syn code is in this repository).
%%
%% bench/syn_erlang.py builds the user's Syn checkout and this module in a temp dir and runs
%% `erl -noshell -run syn_driver main APP_SRC EBIN`. The driver answers one line per command
%% read on stdin, "@@ ok V..." or "@@ error ...", and times everything inside the VM with
%% erlang:monotonic_time/1, the way the Python side times its loops with perf_counter_ns.
%% Names are binaries (<<"name-I">>, the str names of the Python side) or {web, I} tuples;
%% meta is #{port => I}, as on the Python side.
-module(syn_driver).
-export([main/1]).

-define(SCOPES, [b_ops, b_regs, b_groups, b_s1k, b_s10k, b_s100k, b_rw, b_death]).

main([AppSrc, Ebin]) ->
    write_app(AppSrc, Ebin),
    logger:set_primary_config(level, error),
    {ok, _} = application:ensure_all_started(syn),
    ok = syn:add_node_to_scopes(?SCOPES),
    {ok, Vsn} = application:get_key(syn, vsn),
    reply(io_lib:format("ready ~s ~s", [Vsn, erlang:system_info(otp_release)])),
    loop().

%% syn.app from syn.app.src, with the modules that were built
write_app(AppSrc, Ebin) ->
    {ok, [{application, syn, Props}]} = file:consult(AppSrc),
    Mods = [list_to_atom(filename:basename(F, ".beam")) || F <- filelib:wildcard(filename:join(Ebin, "*.beam")),
                                                          filename:basename(F, ".beam") =/= "syn_driver"],
    App = {application, syn, [{modules, Mods} | lists:keydelete(modules, 1, Props)]},
    ok = file:write_file(filename:join(Ebin, "syn.app"), io_lib:format("~p.~n", [App])).

reply(Text) -> io:format("@@ ~s~n", [Text]).

loop() ->
    case io:get_line("") of
        eof -> halt(0);
        {error, _} -> halt(1);
        Line ->
            Words = string:lexemes(string:trim(Line), " "),
            Out = try cmd(Words)
                  catch C:E:St -> io_lib:format("error ~p:~p ~p", [C, E, St])
                  end,
            reply(Out),
            case Words of ["quit"] -> halt(0); _ -> loop() end
    end.

now_ns() -> erlang:monotonic_time(nanosecond).
int(S) -> list_to_integer(S).
scope(S) -> list_to_atom("b_" ++ S).
fmt(Values) -> "ok" ++ lists:flatten([io_lib:format(" ~p", [V]) || V <- Values]).

name("str", I) -> list_to_binary("name-" ++ integer_to_list(I));
name("none", I) -> list_to_binary("none-" ++ integer_to_list(I));
name("tuple", I) -> {web, I}.

%% keys: Count names drawn at random from the first N names of a kind
keys(Kind, N, Count) -> [name(Kind, rand:uniform(N) - 1) || _ <- lists:seq(1, Count)].

cmd(["fill", S, Kind, N0]) ->
    %% register N names, each to a process of its own (Syn's use: one name per process; Syn
    %% slows down with many names on one pid); the answer is ETS bytes per entry
    N = int(N0), Scope = scope(S),
    Holders = [spawn(fun() -> receive stop -> ok end end) || _ <- lists:seq(1, N)],
    garbage_collect(),
    Before = erlang:memory(ets),
    lists:foreach(fun({I, Holder}) ->
                          Meta = case Kind of "none" -> undefined; _ -> #{port => I} end,
                          ok = syn:register(Scope, name(Kind, I), Holder, Meta)
                  end, lists:zip(lists:seq(0, N - 1), Holders)),
    After = erlang:memory(ets),
    fmt([(After - Before) / N]);

cmd(["lookup", S, Kind, N0, Count0]) ->
    Keys = keys(Kind, int(N0), int(Count0)), Scope = scope(S),
    lookup_loop(Scope, Keys),  % warm
    T0 = now_ns(),
    lookup_loop(Scope, Keys),
    fmt([(now_ns() - T0) / length(Keys)]);

cmd(["uncached", S, N0, Count0]) ->
    %% a write elsewhere in the table by another process, then one timed lookup; per-op median
    Scope = scope(S), N = int(N0),
    Poker = spawn_link(fun() -> poker(Scope) end),
    Samples = [begin
                   Poker ! {poke, self(), I}, receive poked -> ok end,
                   K = name("str", rand:uniform(N) - 1),
                   T0 = now_ns(), _ = syn:lookup(Scope, K), now_ns() - T0
               end || I <- lists:seq(1, int(Count0))],
    Poker ! stop,
    Overhead = median([begin T0 = now_ns(), now_ns() - T0 end || _ <- lists:seq(1, 1000)]),
    fmt([median(Samples) - Overhead]);

cmd(["changed", S, N0, Count0]) ->
    %% another process gives the name a new meta (its holder kept), then one timed lookup of it
    Scope = scope(S), N = int(N0),
    Poker = spawn_link(fun() -> poker(Scope) end),
    Samples = [begin
                   K = name("str", rand:uniform(N) - 1),
                   Poker ! {change, self(), K, I}, receive poked -> ok end,
                   T0 = now_ns(), _ = syn:lookup(Scope, K), now_ns() - T0
               end || I <- lists:seq(1, int(Count0))],
    Poker ! stop,
    Overhead = median([begin T0 = now_ns(), now_ns() - T0 end || _ <- lists:seq(1, 1000)]),
    fmt([median(Samples) - Overhead]);

cmd(["regunreg", Count0]) ->
    Count = int(Count0), Self = self(),
    T0 = now_ns(),
    lists:foreach(fun(I) ->
                          K = {tmp, I},
                          ok = syn:register(b_regs, K, Self, #{port => I}),
                          ok = syn:unregister(b_regs, K)
                  end, lists:seq(1, Count)),
    fmt([(now_ns() - T0) / Count]);

cmd(["joinleave", Count0]) ->
    Count = int(Count0), Self = self(),
    T0 = now_ns(),
    lists:foreach(fun(I) ->
                          ok = syn:join(b_groups, jl, Self, #{port => I}),
                          ok = syn:leave(b_groups, jl, Self)
                  end, lists:seq(1, Count)),
    fmt([(now_ns() - T0) / Count]);

cmd(["group", Size0]) ->
    %% Size member processes in group g10
    lists:foreach(fun(I) ->
                          P = spawn(fun() -> receive stop -> ok end end),
                          ok = syn:join(b_groups, g10, P, #{port => I})
                  end, lists:seq(1, int(Size0))),
    fmt([length(syn:members(b_groups, g10))]);

cmd(["members", Count0]) ->
    Count = int(Count0),
    T0 = now_ns(),
    lists:foreach(fun(_) -> syn:members(b_groups, g10) end, lists:seq(1, Count)),
    fmt([(now_ns() - T0) / Count]);

cmd(["read", Secs0, Loaded]) ->
    %% a reader process looks names of b_rw up for Secs; with Loaded=1 a writer process
    %% registers and unregisters in the same scope flat out meanwhile
    Ms = round(list_to_float(Secs0) * 1000),
    Keys = keys("str", 1000, 128),
    Writer = case Loaded of
                 "1" -> spawn(fun() -> writer(0) end);
                 _ -> undefined
             end,
    timer:sleep(20),
    Self = self(),
    spawn(fun() -> Self ! {read, reader(Keys, now_ns() + Ms * 1000000, now_ns(), 0)} end),
    R = receive {read, X} -> X end,
    case Writer of undefined -> ok; _ -> exit(Writer, kill) end,
    {N, Dt} = R,
    fmt([N, Dt / 1.0e9]);

cmd(["death", N0]) ->
    %% N processes each register a name, then are killed at once: seconds until the count is 0
    N = int(N0), Self = self(),
    Ps = [spawn(fun() -> ok = syn:register(b_death, {victim, I}, self()), Self ! {up, self()},
                         receive stop -> ok end end) || I <- lists:seq(1, N)],
    [receive {up, P} -> ok end || P <- Ps],
    N = syn:registry_count(b_death),
    T0 = now_ns(),
    [exit(P, kill) || P <- Ps],
    wait_empty(b_death, T0 + 30000000000),
    fmt([(now_ns() - T0) / 1.0e9]);

cmd(["memory"]) ->
    fmt([erlang:memory(ets), erlang:memory(total)]);

cmd(["quit"]) -> "ok".

lookup_loop(_, []) -> ok;
lookup_loop(Scope, [K | Rest]) -> _ = syn:lookup(Scope, K), lookup_loop(Scope, Rest).

poker(Scope) ->
    receive
        {poke, From, I} -> ok = syn:register(Scope, <<"poke">>, self(), #{port => I}), From ! poked, poker(Scope);
        {change, From, K, I} ->
            {Pid, _} = syn:lookup(Scope, K),
            ok = syn:register(Scope, K, Pid, #{port => I}), From ! poked, poker(Scope);
        stop -> ok
    end.

writer(I) ->
    K = {w, I rem 64},
    ok = syn:register(b_rw, K, self(), #{port => I}),
    ok = syn:unregister(b_rw, K),
    writer(I + 1).

reader(Keys, End, T0, N) ->
    lookup_loop(b_rw, Keys),
    T = now_ns(),
    case T >= End of
        true -> {N + length(Keys), T - T0};
        false -> reader(Keys, End, T0, N + length(Keys))
    end.

wait_empty(Scope, Deadline) ->
    case syn:registry_count(Scope) of
        0 -> ok;
        _ ->
            case now_ns() > Deadline of
                true -> ok;
                false -> timer:sleep(0), wait_empty(Scope, Deadline)
            end
    end.

median(L) ->
    S = lists:sort(L),
    lists:nth((length(S) + 1) div 2, S).
