DROP TABLE oplog_tree_node;
DROP TABLE oplog_tree_head;
DROP TABLE oplog_tree_leaf;
