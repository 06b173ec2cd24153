//! The controller on synthetic costs and acceptance: what it verifies, declines and learns.

use super::*;

fn flat_cost() -> CostModel {
    CostModel::from_curve(vec![(1, 10.0), (2, 10.5), (16, 12.0), (64, 20.0)])
}
fn steep_cost() -> CostModel {
    CostModel::from_curve(vec![(1, 10.0), (2, 14.0), (3, 17.0), (4, 21.0), (5, 30.0), (16, 80.0)])
}

fn chain(scores: &[f32], d: Drafter) -> TokenTree {
    let mut t = TokenTree::default();
    let mut parent = None;
    for (i, &s) in scores.iter().enumerate() {
        parent = Some(t.push(parent, 100 + i as u32, s, d));
    }
    t
}

#[test]
fn cheap_verification_takes_more_nodes_than_expensive() {
    let scores = [0.9, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1];
    let prop = [(Drafter::Suffix, chain(&scores, Drafter::Suffix))];
    let wide = Controller::new(flat_cost()).choose(&prop, 63).tree.len();
    let narrow = Controller::new(steep_cost()).choose(&prop, 63).tree.len();
    assert_eq!(wide, scores.len(), "a flat cost curve verifies everything likely at all");
    assert!((1..4).contains(&narrow), "a steep one only the likely head of the chain: {narrow}");
}

#[test]
fn untried_drafts_are_tried_then_unlikely_ones_mean_plain_decoding() {
    let mut c = Controller::new(steep_cost());
    let prop = [(Drafter::Suffix, chain(&[0.1, 0.05], Drafter::Suffix))];
    assert!(!c.choose(&prop, 63).tree.is_empty(), "a score never tried gets a look");
    for _ in 0..30 {
        let plan = c.choose(&prop, 63);
        let n = plan.tree.len();
        // accepted as often as the score says
        let accepted: Vec<bool> = (0..n).map(|i| i == 0 && c.stats.rounds.is_multiple_of(10)).collect();
        let ms = steep_cost().verify_ms(n + 1);
        c.observe(&plan, &accepted, n + 1, ms, &[]);
    }
    assert!(c.choose(&prop, 63).tree.is_empty(), "a 10% draft does not pay for a 40% dearer pass");
}

#[test]
fn a_cold_chain_of_guesses_is_explored_one_node_deep() {
    // a cold controller: every bin untried. Eight one-token-match guesses scored 0.3: the
    // optimism that gets a bin tried lifts the first node only, so a steep device verifies
    // one of them, not the chain (which cost 4-5 plain steps a round in session 6's qa)
    let guesses = [(Drafter::Suffix, chain(&[0.3; 8], Drafter::Suffix))];
    assert_eq!(Controller::new(steep_cost()).choose(&guesses, 63).tree.len(), 1);
    // a confident chain is still verified deep where rows are cheap, and as far as it pays
    // where they are dear
    let sure = [(Drafter::Suffix, chain(&[0.95; 8], Drafter::Suffix))];
    assert_eq!(Controller::new(flat_cost()).choose(&sure, 63).tree.len(), 8);
    assert!(Controller::new(steep_cost()).choose(&sure, 63).tree.len() >= 3);
}

#[test]
fn cold_siblings_in_one_bin_are_explored_one_at_a_time() {
    // a cold draft model's first level: a likely token and three long shots scored alike. The
    // optimism lifts one long shot per bin, so a device where a row costs 0.3 of a step
    // verifies two nodes, not four (a 5-row first pass of a 1.5B target on lavapipe cost two
    // plain steps)
    let lavapipe = || CostModel::from_curve(vec![(1, 10.0), (2, 13.0), (3, 16.0), (4, 19.0), (5, 22.0), (16, 60.0)]);
    let mut fan = TokenTree::default();
    for (t, s) in [(1, 0.9), (2, 0.04), (3, 0.03), (4, 0.02)] {
        fan.push(None, t, s, Drafter::Draft);
    }
    let plan = Controller::new(lavapipe()).choose(&[(Drafter::Draft, fan)], 63);
    let tokens: Vec<u32> = plan.tree.nodes.iter().map(|n| n.token).collect();
    assert_eq!(tokens, [1, 2], "the likely token and the first long shot");
    // long shots in different bins each get their look
    let mut spread = TokenTree::default();
    for (t, s) in [(1, 0.05), (2, 0.15), (3, 0.25)] {
        spread.push(None, t, s, Drafter::Draft);
    }
    assert_eq!(Controller::new(flat_cost()).choose(&[(Drafter::Draft, spread)], 63).tree.len(), 3);
}

#[test]
fn calibration_learns_that_a_confident_speculator_is_wrong() {
    let mut c = Controller::new(steep_cost());
    let prop = [(Drafter::Head, chain(&[0.9, 0.8], Drafter::Head))];
    assert!(!c.choose(&prop, 63).tree.is_empty(), "trusted at first");
    for _ in 0..100 {
        let plan = c.choose(&prop, 63);
        let n = plan.tree.len();
        let ms = steep_cost().verify_ms(n + 1);
        c.observe(&plan, &vec![false; n], n + 1, ms, &[]);
        if n == 0 {
            break;
        }
    }
    assert!(c.choose(&prop, 63).tree.is_empty(), "never accepted: no longer verified");
}

#[test]
fn a_chain_is_trusted_as_the_product_of_its_conditional_chances() {
    // once-seen continuations (path score 0.5 all along) where each token, once its parent
    // is accepted, is right half the time: the chain's estimates learn to halve with depth
    let mut c = Controller::new(flat_cost());
    let prop = [(Drafter::Suffix, chain(&[0.5; 6], Drafter::Suffix))];
    // (a fixed sequence that does not open with a run of failures: five in a row would
    // make the drafter not worth a row, and it is not looked at again)
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        let plan = c.choose(&prop, 63);
        let mut accepted = Vec::new();
        for i in 0..plan.tree.len() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            accepted.push((i == 0 || accepted[i - 1]) && rng >> 63 == 1);
        }
        let n = plan.tree.len();
        c.observe(&plan, &accepted, n + 1, flat_cost().verify_ms(n + 1), &[]);
    }
    let p: Vec<f32> = c.choose(&prop, 63).tree.nodes.iter().map(|n| n.score).collect();
    assert!(p.len() >= 2 && (0.35..0.65).contains(&p[0]), "{p:?}");
    for w in p.windows(2) {
        assert!((0.3..0.7).contains(&(w[1] / w[0])), "each level about half its parent: {p:?}");
    }
    // so where a row costs 40% of a step, only the head of the chain is verified
    c.cost = steep_cost();
    assert!(c.choose(&prop, 63).tree.len() <= 1);
}

#[test]
fn a_tree_that_barely_beats_plain_decoding_is_not_verified() {
    // steep: a 2-row pass costs 1.4 steps, so one node breaks even at p = 0.4
    for (rate, verified) in [(0.45, false), (0.55, true)] {
        let mut c = Controller::new(steep_cost());
        for i in 0..200 {
            let right = (i as f64 * rate).fract() + rate >= 1.0;
            c.calib[idx(Drafter::Suffix)].observe(0, rate as f32, right);
        }
        let plan = c.choose(&[(Drafter::Suffix, chain(&[rate as f32], Drafter::Suffix))], 63);
        assert_eq!(!plan.tree.is_empty(), verified, "a node accepted {rate} of the time");
    }
}

#[test]
fn declined_drafts_are_learned_from_the_token_the_target_chose() {
    // a round: the plan for a one-node suffix proposal, the target choosing `next`
    let round = |c: &mut Controller, next: u32, learn_declined: bool| {
        let plan = c.choose(&[(Drafter::Suffix, chain(&[0.5], Drafter::Suffix))], 63);
        let accepted: Vec<bool> = plan.tree.nodes.iter().map(|n| n.token == next).collect();
        let n = plan.tree.len();
        c.observe(&plan, &accepted, n + 1, steep_cost().verify_ms(n + 1), &[]);
        if learn_declined {
            c.observe_declined(&plan, &accepted, next, true);
        }
        n
    };
    for learn_declined in [false, true] {
        // a text where the draft (token 100) is never what the target chooses...
        let mut c = Controller::new(steep_cost());
        for _ in 0..100 {
            round(&mut c, 7, learn_declined);
        }
        assert_eq!(round(&mut c, 7, learn_declined), 0, "not verified where it is always wrong");
        // ...then one where it always is: what the calibration's window (~50 observations)
        // takes to move past the price of a row, one observation a round
        let back = (1..=100).find(|_| round(&mut c, 100, learn_declined) > 0);
        if learn_declined {
            assert!(back.is_some_and(|r| r <= 40), "verified again after {back:?} rounds");
        } else {
            assert_eq!(back, None, "learned only from verified nodes, it never finds out");
        }
    }
    // sampling: a declined node is learned from only when the target's token was drawn
    // from its own distribution (no verified sibling rejected before it)
    let mut c = Controller::new(flat_cost());
    let mut t = chain(&[0.9], Drafter::Suffix);
    t.push(None, 5, 0.01, Drafter::Suffix);
    let plan = c.choose(&[(Drafter::Suffix, t)], 1);
    assert_eq!((plan.tree.len(), plan.declined.len()), (1, 1));
    let before = c.calib[0].p(0, 0.01, false);
    c.observe_declined(&plan, &[false], 5, false);
    assert_eq!(c.calib[0].p(0, 0.01, false), before, "the residual after a rejection is not the target's");
    c.observe_declined(&plan, &[false], 5, true);
    assert!(c.calib[0].p(0, 0.01, false) > before, "greedy: the target's choice is its argmax all the same");
}

#[test]
fn the_same_score_is_trusted_on_long_matches_and_not_on_short_ones() {
    let mut c = Controller::new(steep_cost());
    let prop = |evidence| {
        let mut t = chain(&[0.5, 0.5], Drafter::Suffix);
        t.evidence = evidence;
        [(Drafter::Suffix, t)]
    };
    // short matches are never accepted, long ones always
    for r in 0..200 {
        let evidence = if r % 2 == 0 { 1 } else { 8 };
        let plan = c.choose(&prop(evidence), 63);
        let n = plan.tree.len();
        c.observe(&plan, &vec![evidence == 8; n], n + 1, steep_cost().verify_ms(n + 1), &[]);
    }
    assert!(c.choose(&prop(1), 63).tree.is_empty(), "a 1-token match's guesses are not verified");
    assert_eq!(c.choose(&prop(8), 63).tree.len(), 2, "an 8-token match's are");
}

#[test]
fn a_round_after_one_accepted_whole_is_calibrated_apart() {
    // a row costs a fifth of a step: a guess must be right a fifth of the time or more
    let cost = || CostModel::from_curve(vec![(1, 10.0), (2, 12.0), (16, 40.0)]);
    let prop = |evidence| {
        let mut t = chain(&[0.6], Drafter::Suffix);
        t.evidence = evidence;
        [(Drafter::Suffix, t)]
    };
    let round = |c: &mut Controller, evidence, ok: bool| {
        let plan = c.choose(&prop(evidence), 63);
        let n = plan.tree.len();
        c.observe(&plan, &vec![ok; n], n + 1, cost().verify_ms(n + 1), &[]);
        n
    };
    // a long match right two times in three sets the scene; the 1-token guess after it is
    // right exactly when the long match was (two times in three overall, which would pay)
    let mut c = Controller::new(cost());
    for r in 0..300 {
        let ok = r % 3 != 0;
        round(&mut c, 8, ok);
        round(&mut c, 1, ok);
    }
    assert_eq!(round(&mut c, 8, true), 1);
    assert_eq!(c.choose(&prop(1), 63).tree.len(), 1, "after a round accepted whole: verified");
    assert_eq!(round(&mut c, 8, false), 1);
    assert!(c.choose(&prop(1), 63).tree.is_empty(), "after one cut short: not");
    c.begin_request();
    assert!(c.choose(&prop(1), 63).tree.is_empty(), "a request's first round has no streak behind it");
}

#[test]
fn a_draft_model_that_is_always_right_but_dear_to_verify_is_dropped() {
    // the steep curve verifies 3 of the 4 drafts: all accepted, they save 3 steps (30 ms);
    // the 4-row pass costs 11 ms more than a plain one, so drafting may take at most 19 ms
    for (draft_ms, pays) in [(15.0, true), (25.0, false)] {
        let mut c = Controller::new(steep_cost());
        assert_eq!(c.wants(Drafter::Draft, None), Some(1), "a cold start drafts one level deep");
        let plan = c.choose(&[(Drafter::Draft, chain(&[0.95; 4], Drafter::Draft))], 63);
        assert_eq!(plan.tree.len(), 3);
        let drafting = Drafting { drafter: Drafter::Draft, ms: draft_ms, idle_ms: 0.0, deepest: None };
        c.observe(&plan, &[true; 3], 4, steep_cost().verify_ms(4), &[drafting]);
        assert_eq!(c.wants(Drafter::Draft, None).is_some(), pays, "drafting for {draft_ms} ms");
    }
}

#[test]
fn a_paying_draft_model_sits_out_what_the_suffix_index_covers() {
    // it pays (15 ms for 3 accepted tokens, as above), one level deep, its levels 4 ms each
    let mut c = Controller::new(steep_cost());
    c.wants(Drafter::Draft, None);
    let plan = c.choose(&[(Drafter::Draft, chain(&[0.95; 4], Drafter::Draft))], 63);
    let drafting = Drafting { drafter: Drafter::Draft, ms: 15.0, idle_ms: 0.0, deepest: None };
    c.observe(&plan, &[true; 3], 4, steep_cost().verify_ms(4), &[drafting]);
    assert!(c.pays(Drafter::Draft));
    let sure = chain(&[0.95, 0.9], Drafter::Suffix);
    let unsure = chain(&[0.3, 0.2], Drafter::Suffix);
    assert!(c.sits_out(Drafter::Draft, &sure, 8, Some(4.0)), "a 95% first token leaves 0.5 ms to gain");
    assert!(!c.sits_out(Drafter::Draft, &unsure, 8, Some(4.0)), "a 30% one leaves 7 ms");
    assert!(!c.sits_out(Drafter::Draft, &TokenTree::default(), 8, Some(4.0)), "nothing proposed");
    assert!(!c.sits_out(Drafter::Draft, &sure, 8, None), "levels not measured yet");
    // a new request: it starts one level deep again and its first round decides afresh
    c.begin_request();
    c.wants(Drafter::Draft, None);
    let plan = c.choose(&[(Drafter::Draft, chain(&[0.95; 4], Drafter::Draft))], 63);
    let drafting = Drafting { drafter: Drafter::Draft, ms: 15.0, idle_ms: 0.0, deepest: None };
    c.observe(&plan, &[false; 3], 4, steep_cost().verify_ms(4), &[drafting]);
    assert!(!c.pays(Drafter::Draft), "one losing first round is enough");
}

#[test]
fn a_draft_model_is_priced_at_the_speed_of_its_round() {
    // the same rounds as above, after the machine ran at half speed for a while and is back to
    // full speed: the 3 steps saved are worth 30 ms now, not what steps took before
    for (draft_ms, pays) in [(15.0, true), (25.0, false)] {
        let mut c = Controller::new(steep_cost());
        let empty =
            Plan { tree: TokenTree::default(), sources: vec![], declined: vec![], proposed: 0, best_declined: 0.0 };
        for _ in 0..30 {
            c.observe(&empty, &[], 1, 2.0 * steep_cost().verify_ms(1), &[]);
        }
        assert!(c.cost.verify_ms(1) > 18.0, "the cost model has followed the slow machine");
        assert_eq!(c.wants(Drafter::Draft, None), Some(1));
        let plan = c.choose(&[(Drafter::Draft, chain(&[0.95; 4], Drafter::Draft))], 63);
        assert_eq!(plan.tree.len(), 3);
        let drafting = Drafting { drafter: Drafter::Draft, ms: draft_ms, idle_ms: 0.0, deepest: None };
        c.observe(&plan, &[true; 3], 4, steep_cost().verify_ms(4), &[drafting]);
        assert_eq!(c.wants(Drafter::Draft, None).is_some(), pays, "drafting for {draft_ms} ms");
    }
}

#[test]
fn drafts_below_the_price_of_a_row_are_not_expanded() {
    let (flat, steep) = (Controller::new(flat_cost()), Controller::new(steep_cost()));
    assert_eq!(flat.min_score(Drafter::Draft), 0.0, "a row costs 5% of a step: everything");
    assert!(steep.min_score(Drafter::Draft) == 0.0, "cold, the optimism covers every score");
    // an overconfident draft model, right 60% as often as it says: on a device where a row
    // costs 40% of a step, its nodes are worth a row from a score of 0.67
    let mut c = Controller::new(steep_cost());
    for b in 0..BINS {
        let score = (b as f32 + 0.5) / BINS as f32;
        for i in 0..100 {
            let right = (i as f32 * 0.6 * score).fract() + 0.6 * score >= 1.0;
            c.calib[idx(Drafter::Draft)].observe(0, score, right);
        }
    }
    let min = c.min_score(Drafter::Draft);
    assert!((0.55..0.75).contains(&min), "{min}");
}

#[test]
fn levels_are_expanded_only_past_nodes_that_can_pay_for_their_pass() {
    // a row costs 40% of a step on the steep device; a drafter taken at its word (its scores
    // right as often as they say)
    let mut c = Controller::new(steep_cost());
    for b in 0..BINS {
        let score = (b as f32 + 0.5) / BINS as f32;
        for i in 0..100 {
            c.calib[idx(Drafter::Draft)].observe(0, score, ((i * 37 % 100) as f32 + 0.5) / 100.0 < score);
        }
    }
    let row_only = c.min_score(Drafter::Draft);
    assert!((0.3..0.5).contains(&row_only), "{row_only}");
    assert_eq!(c.min_expand_score(Drafter::Draft, None), row_only, "an unmeasured level: the row's price");
    assert_eq!(c.min_expand_score(Drafter::Draft, Some(0.1)), row_only, "a level at 1% of a step");
    // a level at 40% of a step: a node must be accepted 80% of the time to pay for its pass
    // and a row
    let dear = c.min_expand_score(Drafter::Draft, Some(4.0));
    assert!((0.7..0.9).contains(&dear), "{dear}");
    assert_eq!(c.min_expand_score(Drafter::Draft, Some(20.0)), 1.0, "levels dearer than a step: none");
}

#[test]
fn merges_proposals_and_keeps_sources() {
    let mut c = Controller::new(flat_cost());
    let a = chain(&[0.9, 0.8], Drafter::Suffix);
    let mut b = chain(&[0.6], Drafter::Head); // the same first token
    b.push(None, 7, 0.5, Drafter::Head);
    let plan = c.choose(&[(Drafter::Suffix, a), (Drafter::Head, b)], 63);
    assert_eq!(plan.tree.len(), 3);
    let first = plan.tree.nodes.iter().position(|n| n.token == 100).unwrap();
    assert_eq!(plan.sources[first].len(), 2, "proposed by both");
    assert!(plan.tree.nodes.iter().any(|n| n.token == 7 && n.drafter == Drafter::Head));
    // the tree is well formed: parents first
    for (i, n) in plan.tree.nodes.iter().enumerate() {
        assert!(n.parent.is_none_or(|p| p < i));
    }
}

/// Rounds of 10 ms in which an expensive speculator that never pays is offered to draft,
/// each look costing `look_ms` plus `idle_ms` per token committed while it sat out. Returns
/// the rounds it looked at and the share of the time spent looking.
fn looks(c: &mut Controller, rounds: u64, look_ms: f64, idle_ms: f64, said: Option<f64>) -> (Vec<u64>, f64) {
    let empty = Plan { tree: TokenTree::default(), sources: vec![], declined: vec![], proposed: 0, best_declined: 0.0 };
    let (mut at, mut last, mut spent, mut total) = (Vec::new(), 0, 0.0, 0.0);
    for r in 0..rounds {
        let w = c.wants(Drafter::Draft, said);
        let drafted: Vec<Drafting> = w
            .map(|depth| {
                assert_eq!(depth, 1, "a look is one level deep");
                let idle = idle_ms * r.saturating_sub(last + 1) as f64;
                at.push(r);
                last = r;
                spent += look_ms + idle;
                Drafting { drafter: Drafter::Draft, ms: look_ms, idle_ms: idle, deepest: Some((1, look_ms)) }
            })
            .into_iter()
            .collect();
        total += 10.0 + drafted.iter().map(|d| d.ms + d.idle_ms).sum::<f64>();
        c.observe(&empty, &[], 1, 10.0, &drafted);
    }
    (at, spent / total)
}

#[test]
fn an_expensive_speculator_that_does_not_pay_is_looked_at_ever_less_often() {
    let mut c = Controller::new(steep_cost());
    let (at, _) = looks(&mut c, 800, 0.2, 0.0, None);
    let gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [16, 32, 64, 128, 256, 256], "looks at {at:?}");
    // a new request is looked at in its first round, whatever the interval
    c.begin_request();
    assert_eq!(c.wants(Drafter::Draft, None), Some(1));
    assert_eq!(c.wants(Drafter::Draft, None), None, "once");
}

#[test]
fn looks_at_request_starts_keep_within_their_share_too() {
    // requests of 20 rounds of 10 ms; a look at a request's start (no catch-up: the prompt was
    // fed in prefill) drafts for 30 ms, more than a tenth of a request
    let mut c = Controller::new(steep_cost());
    let empty = Plan { tree: TokenTree::default(), sources: vec![], declined: vec![], proposed: 0, best_declined: 0.0 };
    let (mut looked, mut spent, mut total) = (Vec::new(), 0.0, 0.0);
    for request in 0..200 {
        c.begin_request();
        assert_eq!(c.may_draft(Drafter::Draft), request == 0 || c.worth[idx(Drafter::Draft)].look_due);
        for round in 0..20 {
            let drafted: Vec<Drafting> = c
                .wants(Drafter::Draft, None)
                .map(|_| {
                    // (the first draft is the cold start, not a look)
                    if (request, round) != (0, 0) {
                        looked.push((request, round));
                        spent += 30.0;
                    }
                    Drafting { drafter: Drafter::Draft, ms: 30.0, idle_ms: 0.0, deepest: Some((1, 30.0)) }
                })
                .into_iter()
                .collect();
            total += 10.0 + drafted.iter().map(|d| d.ms).sum::<f64>();
            c.observe(&empty, &[], 1, 10.0, &drafted);
        }
    }
    assert!(spent / total <= EXPLORE_SHARE, "looks took {:.1}% of the time", 100.0 * spent / total);
    assert!(looked.len() >= 10, "it is still looked at now and then: {looked:?}");
}

#[test]
fn looks_that_must_feed_every_skipped_token_keep_within_their_share() {
    // a look costs 5 ms plus what feeding each round it sat out costs
    for (idle_ms, min_looks) in [(0.05, 8), (1.0, 2)] {
        let mut c = Controller::new(steep_cost());
        let (at, share) = looks(&mut c, 5000, 5.0, idle_ms, None);
        assert!(at.len() >= min_looks, "{idle_ms} ms per token: looked at {at:?}");
        assert!(share <= EXPLORE_SHARE, "{idle_ms} ms per token: looks took {:.1}% of the time", share * 100.0);
    }
    // told the price of feeding a token beforehand (a draft model times its prefill), it
    // does not spend a look finding out that looks within a request do not fit
    let mut c = Controller::new(steep_cost());
    let (at, _) = looks(&mut c, 5000, 5.0, 1.0, Some(1.0));
    assert_eq!(at, [0], "only the cold start drafted");
}

#[test]
fn lookahead_deepens_while_the_deepest_level_pays_and_shortens_when_it_stops() {
    // flat verification (a step of 10 ms): a right draft saves a step
    let round = |c: &mut Controller, right: usize, level_ms: f64| {
        let depth = c.wants(Drafter::Head, None).expect("paying");
        let plan = c.choose(&[(Drafter::Head, chain(&vec![0.9; depth], Drafter::Head))], 63);
        let n = plan.tree.len();
        let accepted: Vec<bool> = (0..n).map(|i| i < right).collect();
        let ms = 2.0 + level_ms * (depth - 1) as f64;
        let drafting = Drafting { drafter: Drafter::Head, ms, idle_ms: 0.0, deepest: Some((depth, level_ms)) };
        c.observe(&plan, &accepted, n + 1, flat_cost().verify_ms(n + 1), &[drafting]);
        depth
    };
    let mut c = Controller::new(flat_cost());
    let depths: Vec<usize> = (0..6).map(|_| round(&mut c, usize::MAX, 2.0)).collect();
    assert_eq!(depths, [1, 2, 3, 4, 5, 6], "one level deeper after each round all of it was accepted");
    // drift: only the first two drafts are right from now on
    let later: Vec<usize> = (0..8).map(|_| round(&mut c, 2, 2.0)).collect();
    assert_eq!(later[..4], [7, 6, 5, 4], "one level shallower after each round its deepest level failed");
    assert!(later[4..].iter().all(|&d| (2..=3).contains(&d)), "then settles where drafts are right: {later:?}");
    // a level whose own pass costs more than the step it saves is not worth drafting, even
    // when always right (the first level comes from a cheap pass)
    let mut c = Controller::new(flat_cost());
    let depths: Vec<usize> = (0..6).map(|_| round(&mut c, usize::MAX, 11.0)).collect();
    assert!(depths.iter().all(|&d| d <= 2), "{depths:?}");
}
