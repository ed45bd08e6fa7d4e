//! The decision tables of one policy, decided at compile time: every written form of a name, and
//! which map wins for each key (§4 precedence), by kind of field.

use std::collections::BTreeMap;

use super::spellings;
use crate::maps::{precedence, CompiledMap, Scope};

/// The decision tables of one policy: which map wins for each written name, by kind of field.
#[derive(Default)]
pub(super) struct Tables<'m> {
    /// Every written form of a selector's name -> the normalized name.
    pub(super) spell: BTreeMap<String, String>,
    pub(super) image_exact: BTreeMap<String, usize>,
    pub(super) image_name: BTreeMap<String, usize>,
    pub(super) env_exact: BTreeMap<String, usize>,
    pub(super) env_name: BTreeMap<String, usize>,
    /// The winners, indexed by the table values.
    pub(super) winners: Vec<&'m CompiledMap>,
}

impl<'m> Tables<'m> {
    pub(super) fn build(maps: &[(&'m CompiledMap, Scope)]) -> Tables<'m> {
        let mut sorted = maps.to_vec();
        sorted.sort_by(|a, b| precedence(*a, *b));
        let mut t = Tables::default();
        for (map, _) in sorted {
            let selector = &map.selector;
            for written in spellings(selector.name()) {
                t.spell.insert(written, selector.name().to_string());
            }
            // Best first: the first map to claim a key keeps it.
            let index = t.winners.len();
            let (key, image_table, env_table) = if map.match_exact {
                (selector.full(), &mut t.image_exact, &mut t.env_exact)
            } else {
                (selector.name().to_string(), &mut t.image_name, &mut t.env_name)
            };
            let mut claimed = claim(image_table, key.clone(), index);
            if map.match_in_env_vars {
                claimed |= claim(env_table, key, index);
            }
            if claimed {
                t.winners.push(map);
            }
        }
        t
    }

    pub(super) fn has_env(&self) -> bool {
        !self.env_exact.is_empty() || !self.env_name.is_empty()
    }
}

/// Puts `key -> index` into `table` unless a better map has it; true when it was put.
fn claim(table: &mut BTreeMap<String, usize>, key: String, index: usize) -> bool {
    match table.entry(key) {
        std::collections::btree_map::Entry::Vacant(v) => {
            v.insert(index);
            true
        }
        std::collections::btree_map::Entry::Occupied(_) => false,
    }
}
