"""A grammar of children's stories: the offline stand-in for TinyStories, with headroom.

When the Hugging Face hub cannot be reached (an offline classroom, a CI machine), the
course trains on stories from this module (``data``'s ``"offline"`` source).  The
course's first stand-in filled ten fixed plot templates: ~2,300 stories with ~1,400
distinct words, learnt by a small model in a few hundred steps, so a bigger or grown
model had nothing left to show.  This module builds stories from a grammar instead, so
that a corpus of any size can be drawn and bigger models still have something to learn:

* **characters** -- a child or an animal with a name, pronouns, a trait, a home, a
  favourite toy (with a colour and a look), a favourite food and a hobby; a friend; an
  adult helper. Later sentences refer back to them ("her red kite", "his grandpa").
* **a setting** -- one of ~40 places, each with its own sights, activities and person,
  and one kind of weather.
* **a plot** -- one of ten shapes (a lost toy, a stuck toy, an animal in trouble, a
  fear, a skill to learn, a quarrel, spoiled plans, a treat to make, a broken thing, a
  surprise), each a problem, one to three attempts, a result and a feeling.
* **dialogue** -- questions with answers that fit them and the story's facts.
* **a world that stays the same** -- a character is the same in every story: Woody the
  boy always has the same trait, toy, food and hobby (drawn once from a hash of his
  kind and name). These are facts a model can learn, not noise.

Story ``i`` of a split depends only on ``(seed, split, i)``: it is drawn with its own
``random.Random`` seeded from a BLAKE2 hash of those three, so any slice can be built on
its own, lazily, and every machine gets the same text. The train and validation splits
are disjoint by construction: a story belongs to the split named by one bit of the hash
of its text, and a draw whose text belongs to the other split is drawn again.

Honest note: this is a generated stand-in, NOT the real TinyStories data set. All text is
written for this course; losses measured on it are not comparable to published numbers.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from itertools import islice
from typing import Iterable, Iterator

NOTICE = ("This is a generated stand-in for TinyStories (a grammar of children's stories written for this "
          "course), not the real dataset, so its losses are not comparable to published TinyStories numbers.")

SPLITS = {"train": "train", "validation": "validation", "val": "validation"}
SPLIT_BIT = {"train": 0, "validation": 1}     # the bit of a story's text hash that names its split
WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")
SENTENCE_END = re.compile(r'(?<=[.!?])"?\s+(?=["A-Z])')   # not inside '"Hi!" said Sue.'
SENTENCE_START = re.compile(r'(^|[.!?] +"?|\n|[,:] ")([a-z])')


def _words(text: str) -> tuple[str, ...]:
    """Split a '|'-separated string into a tuple of words or phrases."""
    return tuple(" ".join(word.split()) for word in text.split("|") if word.strip())


def _rows(text: str) -> tuple[tuple[str, ...], ...]:
    """Lines of '|'-separated fields; a field holding ';' becomes a tuple of alternatives."""
    rows = []
    for line in text.strip().splitlines():
        fields = [field.strip() for field in line.split("|")]
        rows.append(tuple(_words(field.replace(";", "|")) if ";" in field else field for field in fields))
    return tuple(rows)


# ------------------------------------------------------------------------------ word lists
GIRL_NAMES = _words("""Lily|Mia|Emma|Sue|Anna|Lucy|Sara|Amy|Ella|Zoe|Ruby|Rosie|Daisy|Molly|Chloe|Grace|Ava|
Olivia|Sophie|Hannah|Maya|Nora|Ivy|Lila|Jenny|Kate|Jane|Bella|Clara|Alice|Holly|Poppy|Stella|Luna|Hazel|Iris|
Julia|Nina|Tina|Rita|Megan|Amber|Elsa|Leah|Piper|Willow|Violet|Eva|Fiona|Gina|Heidi|Isla|Jade|Kara|Laura|Maria|
Naomi|Penny|Rosa|Tara|Wendy|Abby|Bonnie|Cora|Dora|Flora|Gemma|Hope|Joy|Kim|Lola|Mabel|Nell|Pearl|Sadie|Tess|
Vera|Zara|Aisha|Priya|Mei|Yuki|Amara|Fatima|Lina|Sofia|Camila|Nia|Beth|Jill|Ada|Agnes|Alma|Annie|Ariel|Aurora|
Betty|Bree|Carla|Carmen|Cindy|Dana|Della|Dina|Edith|Eliza|Ellie|Emily|Erin|Esme|Faith|Freya|Georgia|Greta|
Hattie|Ida|Imogen|Ingrid|June|Kayla|Kiki|Lacey|Layla|Lena|Lisa|Lottie|Lucia|Mae|Maisie|Margo|Martha|Matilda|
Millie|Mira|Nadia|Nancy|Nova|Opal|Paige|Polly|Quinn|Rae|Rina|Robin|Sally|Sasha|Selma|Sienna|Talia|Thea|Trudy|
Una|Vivian|Wren|Yara|Zelda|Elena|Keiko|Ayla|Leila|Noor|Mina|Rani|Sana|Tamsin|Bea|Dot|Fern|Gwen""")
BOY_NAMES = _words("""Tom|Ben|Max|Sam|Jack|Leo|Tim|Joe|Jake|Finn|Noah|Liam|Oliver|Henry|Charlie|Ollie|Theo|Luke|
Ryan|Adam|Alex|Owen|Eli|Evan|Felix|George|Harry|Ian|Jamie|Kai|Leon|Mark|Nate|Oscar|Paul|Ray|Rob|Seth|Ted|Toby|
Victor|Will|Zack|Bobby|Billy|Danny|Eddie|Frank|Gabe|Hugo|Ivan|Jonah|Kevin|Lenny|Milo|Ned|Otto|Pete|Rory|Sid|
Timmy|Ricky|Arlo|Ezra|Jude|Omar|Ravi|Kenji|Mateo|Diego|Ali|Kofi|Amir|Sami|Louis|Jasper|Silas|Hank|Tyler|Dylan|
Caleb|Bruno|Carlos|Dev|Aaron|Abel|Andy|Archie|Barney|Basil|Benji|Bert|Caspar|Cody|Colin|Dan|Dexter|Elliot|Emil|
Ernie|Fred|Gus|Harvey|Isaac|Jay|Joel|Jon|Karl|Lars|Levi|Lucas|Marco|Marty|Micah|Miles|Nico|Nils|Percy|Quentin|
Ralph|Reggie|Remy|Rex|Rudy|Rufus|Sonny|Stan|Teddy|Tobias|Walter|Wes|Wyatt|Xavier|Yusuf|Zane|Arjun|Hiro|Kwame|
Tariq|Pablo|Luca|Mason|Elijah|Ethan|Jacob|Logan|Ronan|Shane|Troy|Vince|Wally|Woody|Ozzie|Boris|Cyrus|Dario""")
PET_NAMES = _words("""Spot|Buddy|Coco|Pip|Fluffy|Mittens|Whiskers|Patch|Biscuit|Muffin|Peanut|Pepper|Ziggy|Bubbles|
Rusty|Snowy|Sunny|Bingo|Tiny|Fuzzy|Lucky|Benny|Honey|Cookie|Sparky|Hoppy|Nibbles|Bolt|Button|Jelly|Oreo|Pickles|
Shadow|Socks|Tofu|Waffles|Ginger|Cocoa|Scout|Pebble|Bramble|Clover|Puddles|Squeak|Toffee|Noodle|Bean|Acorn|Barkley|
Blossom|Bumble|Chester|Dusty|Flash|Freckles|Gizmo|Goldie|Jingles|Marbles|Misty|Nutmeg|Olive|Paws|Pudding|Rascal|
Ripple|Sprout|Thistle|Twinkle|Velvet|Wiggles|Zippy|Sprinkles|Crumbs|Dumpling|Hazelnut|Juniper|Maple|Poppet|Tinker""")

# animal | the sound it makes (past tense) | where it lives
ANIMALS = _rows("""dog|barked|a kennel in the yard
puppy|yipped|a soft basket by the stove
cat|meowed|a warm house on a quiet street
kitten|mewed|a basket full of old sweaters
bunny|squeaked|a burrow under the hedge
rabbit|thumped its foot|a hutch in the garden
bear|growled|a cave in the hills
bear cub|grunted|a den under a fallen tree
fox|yipped|a den at the edge of the woods
mouse|squeaked|a tiny hole in the kitchen wall
owl|hooted|a hollow in an old oak tree
frog|croaked|a lily pad on the pond
pig|oinked|a muddy pen on a farm
piglet|squealed|a pen full of straw
lamb|baaed|a green field on a farm
sheep|baaed|a hillside covered in clover
goat|bleated|a rocky hill
cow|mooed|a big red barn
calf|mooed|a barn with a squeaky door
horse|neighed|a stable on a farm
pony|neighed|a stable with a blue door
donkey|brayed|a little field by the road
chicken|clucked|a coop behind the farmhouse
chick|peeped|a coop full of straw
hen|clucked|a henhouse on a farm
rooster|crowed|a tall fence post on a farm
duck|quacked|a pond in the park
duckling|peeped|a nest in the reeds
goose|honked|a pond behind the barn
squirrel|chattered|a nest high in a maple tree
chipmunk|chirped|a burrow under a stone wall
turtle|hissed softly|a log in a muddy pond
hedgehog|snuffled|a pile of leaves in a garden
hamster|squeaked|a cage with a little wheel
guinea pig|squeaked|a cozy cage in a classroom
mole|sniffed|a tunnel under a meadow
badger|grunted|a burrow in the forest
otter|chirped|a bank of a quick river
beaver|slapped its tail|a lodge of sticks in a stream
raccoon|chittered|a hollow tree near a town
deer|snorted|a quiet part of the forest
fawn|bleated|a ferny corner of the woods
wolf|howled|a den in the snowy mountains
lion|roared|the tall grass of a wide plain
tiger|roared|a thick green jungle
elephant|trumpeted|a dusty plain by a river
giraffe|hummed|a plain with tall trees
zebra|brayed|a wide grassy plain
monkey|chattered|the top of a jungle tree
hippo|grunted|a muddy river
kangaroo|thumped|a dry, sunny land far away
koala|grunted|a gum tree far away
panda|squeaked|a bamboo forest
penguin|squawked|a cold, icy shore
seal|barked|a rock by the cold sea
whale|sang|the deep blue sea
dolphin|clicked|the warm sea
crab|clicked its claws|a rock pool on the beach
snail|stayed quiet|a cool spot under a leaf
bee|buzzed|a hive in an apple tree
butterfly|fluttered|a garden full of flowers
ladybug|buzzed|a rose bush
ant|stayed quiet|an anthill under the steps
spider|stayed quiet|a web in the corner of a shed
caterpillar|munched|a big green leaf
parrot|squawked|a bright cage in a kitchen
robin|chirped|a nest in a cherry tree
sparrow|chirped|a nest under a roof
crow|cawed|a tall pine tree
swan|hissed|a quiet lake
peacock|called|the garden of an old castle
camel|grunted|a hot, sandy desert
llama|hummed|a farm in the hills
bat|squeaked|a dark cave
lizard|stayed still|a warm rock in the sun
skunk|stamped its feet|a hole under a porch
walrus|bellowed|an icy beach
puffin|grunted|a cliff by the sea
polar bear|growled|the ice and snow of the far north
reindeer|grunted|a snowy forest
moose|bellowed|a marsh in the north
seahorse|stayed quiet|a bed of seaweed
goldfish|blew bubbles|a round glass bowl
firefly|glowed|a field at the edge of town
dragonfly|buzzed|the reeds by a pond
woodpecker|tapped|a tall dead tree
hummingbird|hummed|a garden of red flowers
pelican|clacked its beak|a dock by the sea
sloth|yawned|a tree in the rainforest
porcupine|grunted|a hollow log
lemur|called|a tree on a faraway island""")

TOYS = _words("""ball|kite|doll|teddy bear|robot|toy car|toy train|drum|yo-yo|spinning top|puzzle|jump rope|wagon|
scooter|bike|tricycle|skateboard|sled|toy boat|toy plane|rocket|dump truck|tractor|toy dinosaur|puppet|marble|
whistle|harmonica|xylophone|music box|snow globe|kaleidoscope|pinwheel|bubble wand|balloon|hula hoop|frisbee|
beach ball|bucket|shovel|box of crayons|paint set|sticker book|coloring book|picture book|tea set|dollhouse|
toy castle|crown|magic wand|cape|mask|hat|rubber duck|stuffed bunny|stuffed owl|plush whale|toy horse|rocking horse|
fire truck|police car|toy bus|helicopter|submarine|sailboat|race car|train set|magnet|telescope|magnifying glass|
compass|flashlight|walkie-talkie|toy phone|toy piano|toy guitar|ukulele|tambourine|trumpet|bell|kazoo|slinky|
jack-in-the-box|spaceship|action figure|toy soldier|rag doll|wooden duck|building blocks|bouncy ball|glider|
water pistol|net|fishing rod|treasure chest|toy tent|baby doll|stuffed elephant|sock monkey|toy drum|jigsaw puzzle|
paper crown|clay pot|dragon kite|toy lamb|toy fox|toy tiger|toy penguin|wind-up mouse|pogo stick|roller skates""")
COLOURS = _words("red|blue|green|yellow|pink|purple|orange|white|black|brown|gold|silver|gray|golden|bright red|"
                 "dark blue|light blue|pale green|deep purple|lime green|sky blue|rosy pink|lemon yellow")
LOOKS = _words("""sturdy|glossy|knobbly|chunky|dainty|jingly|squeaky|rattly|twinkly|crinkly|lumpy|frilly|checkered|
polka-dot|woolly|silky|feathery|stripy|gleaming|battered|
shiny|soft|old|new|little|big|fluffy|bumpy|sparkly|striped|spotted|wooden|tiny|huge|round|smooth|
squishy|fuzzy|bouncy|noisy|funny|pretty|special|fancy|plain|tall|long|heavy|light|bright|cozy|floppy|wobbly|speedy|
clever|dusty|patched|painted|glittery|velvet""")
FOODS = _words("""turnips|parsnips|beets|leeks|zucchini|eggplant|avocado|olives|pickles|coleslaw|cornbread|
flapjacks|scones|crumpets|shortbread|brownies|meringues|macaroni|risotto|lentil soup|chowder|quesadillas|omelets|
scrambled eggs|fish pie|shepherd's pie|pot roast|potato salad|pasta salad|tangerines|nectarines|cranberries|
gooseberries|blackberries|rhubarb pie|date cakes|sesame buns|rice balls|spring rolls|noodle soup|
apples|bananas|oranges|pears|peaches|plums|grapes|cherries|strawberries|blueberries|raspberries|
melon|watermelon|mango|pineapple|kiwis|lemons|coconut|apricots|figs|carrots|peas|green beans|corn|potatoes|
tomatoes|cucumbers|pumpkin pie|broccoli|cabbage soup|lettuce|radishes|spinach|celery|mushrooms|bread|toast|
rolls|buns|bagels|muffins|cupcakes|cake|apple pie|cherry pie|jam tarts|cookies|crackers|biscuits|pancakes|waffles|
doughnuts|pretzels|sandwiches|tomato soup|vegetable stew|rice|noodles|pasta|spaghetti|pizza|tacos|dumplings|
eggs|cheese|butter|yogurt|milk|orange juice|lemonade|hot cocoa|honey|jam|jelly|peanut butter|cereal|oatmeal|
porridge|popcorn|candy|chocolate|lollipops|gumdrops|marshmallows|ice cream|rice pudding|custard|fudge|toffee|
nuts|raisins|sausages|fish sticks|meatballs|baked beans|fries|corn on the cob|cinnamon rolls|banana bread|
blueberry muffins|cheese sandwiches|grilled cheese|fruit salad|applesauce|carrot cake|gingerbread|sugar cookies|
oat cookies|pita bread|hummus|soup|stew|chicken soup|mashed potatoes|sweet potatoes|plum cake|berry jam|
hot buns|crepes|pudding|pizza slices|cheese crackers|rice cakes|honey cakes|lemon cake""")
TRAITS = _words("""adventurous|daring|loving|cuddly|cheeky|spirited|sensible|graceful|zippy|nimble|mischievous|
hardworking|cheery|hopeful|bubbly|warm-hearted|peppy|gentle-hearted|tender|lovable|
kind|brave|curious|cheerful|friendly|clever|playful|gentle|silly|busy|sweet|shy|funny|helpful|
honest|polite|quiet|loud|smart|happy|bouncy|careful|patient|generous|thoughtful|lively|sleepy|bold|caring|
chatty|dreamy|neat|speedy|strong|wise|little|young|small|tall|giggly|sunny|lucky|proud|jolly|merry|eager""")
GOOD_FEELINGS = _words("""thrilled|content|bouncy|tickled pink|cheery|overjoyed|satisfied|snug|jolly|merry|
happy|glad|proud|excited|cheerful|joyful|thankful|calm|brave|safe|warm inside|cozy|
delighted|pleased|hopeful|relieved|giggly|lucky|loved|peaceful|grateful|bright and light""")
BAD_FEELINGS = _words("""sulky|teary|droopy|restless|puzzled|anxious|glum|fed up|sheepish|startled|timid|grumbly|
sad|upset|worried|grumpy|scared|afraid|nervous|lonely|angry|cross|gloomy|unhappy|tired|
frustrated|jealous|embarrassed|confused|bored|cranky|miserable|disappointed|hurt|sorry|shaky|grouchy""")
HOBBIES = _words("""solve jigsaw puzzles|feed the chickens|watch the raindrops race down the window|
bounce on the trampoline|collect acorns and pinecones|build robots out of boxes|practice magic tricks|
press flowers in heavy books|learn new words|play checkers with grandpa|decorate cupcakes|
listen to the radio|ride the carousel|sketch birds in a notebook|dig tunnels in the sandbox|
sing songs|draw pictures|paint with bright colors|run in the grass|look at the clouds|
build sand castles|dance in the kitchen|read picture books|splash in puddles|pick flowers|count the stars|
blow bubbles|watch the birds|make mud pies|climb trees|help in the garden|bake cookies|collect shiny rocks|
play music|chase butterflies|roll down hills|look for bugs|tell jokes|play in the sand|ride in the wagon|
play dress-up|build forts out of pillows|feed the ducks|jump on the bed|hum little tunes|make paper boats|
fold paper planes|play hide-and-seek|skip down the road|whistle with a blade of grass|plant seeds|
look at picture maps|make up stories|play with clay|string beads|knit with grandma|fix things with tape|
ride a red bike|swing as high as the sky|hop like a frog|watch the trains go by|sort buttons by color|
draw with chalk on the sidewalk|play the drums on pots and pans|race toy cars|dig for worms|sing to the fish|
count the ducks|make crowns out of daisies|spin around and around|tell stories to the moon""")
GAMES = _words("""tag|hide-and-seek|catch|hopscotch|leapfrog|dress-up|follow the leader|house|chase|pirates|
school|statues|red light, green light|hot potato|musical chairs|duck, duck, goose|I spy|simon says|marbles|
tug of war|cops and robbers|shop|tea party|treasure hunt|ring around the rosie""")
ADULTS = _rows("""mom|Mom|she
dad|Dad|he
mommy|Mommy|she
daddy|Daddy|he
grandma|Grandma|she
grandpa|Grandpa|he
granny|Granny|she
nana|Nana|she
papa|Papa|he
aunt|Auntie|she
uncle|Uncle|he
babysitter|Miss Kim|she
neighbor|Mr. Brown|he
neighbor|Mrs. Green|she
teacher|Miss Rose|she
teacher|Mr. Lee|he""")
PRONOUNS = {"he": ("he", "him", "his"), "she": ("she", "her", "her"), "it": ("it", "it", "its")}
WHENS = _words("""One day|One morning|One afternoon|One Saturday|One Sunday morning|Early one morning|
Later that week|After breakfast one day|On a Monday|One evening|One spring day|One summer day|One fall day|
One winter day|On a bright morning|One rainy afternoon|On the first day of spring|One lazy Sunday|
On a windy Tuesday|One Friday after school|Just before lunch one day|On a cold morning""")
NUMBERS = _words("two|three|four|five|six|seven|eight|nine|ten|eleven|twelve")
CLOTHES = _words("""tutu|poncho|dungarees|tights|leggings|wellies|tracksuit|bathrobe|nightgown|bonnet|beret|beanie|
bandana|waistcoat|kilt|jumper|blouse|skirt|cowboy boots|ballet shoes|party dress|bow|headband|hair clip|
bobble hat|fleece|windbreaker|flip-flops|clogs|moccasins|sweatshirt|raincape|pinafore|smock|tunic|parka|
coat|scarf|sweater|rain boots|raincoat|mittens|sun hat|woolly hat|jacket|sandals|swimsuit|
sneakers|gloves|overalls|dress|shorts|pajamas|slippers|cap|vest|hoodie|socks|snow boots|snow pants|earmuffs|
sunglasses|apron|cardigan|bow tie|belt""")

# Things passed on the way somewhere: "{look-ish adjective} {thing}".
WAYSIDE_ADJECTIVES = _words("""ancient|lopsided|enormous|miniature|tidy|messy|gleaming|sparkling|faded|chipped|peeling|
twisty|gigantic|cheerful|gloomy|silent|humming|buzzing|dripping|snowy|blooming|crumbly|towering|ivy-covered|
freshly painted|brand-new|wobbly|spotless|fancy|colorful|sturdy|flimsy|grand|
tall|tiny|old|crooked|busy|quiet|muddy|dusty|shady|sunny|leafy|rusty|creaky|
painted|mossy|narrow|wide|winding|steep|grassy|rocky|sleepy|noisy|lonely|friendly|empty|crowded|bumpy|broken|
shiny|wet|frozen|hollow|purple|golden""")
WAYSIDE_THINGS = _words("""marketplace|courtyard|farmyard|schoolyard|churchyard|graveyard of old boats|boathouse|
water tower|weather vane|totem pole|dovecote|orchard wall|cobblestone lane|alleyway|stone arch|drawbridge|
pond with lily pads|pasture|paddock|vegetable stall|newsstand|bakery window|shoe shop|hat shop|fish market|
greenhouse|gazebo|igloo|treetop|riverbank|pier|dock|quarry|sawmill|well|water pump|sundial|
birdhouse|signpost|phone booth|ice cream truck|hot air balloon|blimp|parade|marching band|bookstall|flower stall|
junkyard|shipyard|railway track|footbridge|stepping stones|rope bridge|tide pool|sandbar|lagoon|bramble patch|
hazel thicket|bamboo grove|palm tree|cactus|birch tree|chestnut tree|elm tree|poplar|sycamore|beech tree|
walnut tree|lemon tree|fig tree|plum tree|hay bale|silo|rabbit hutch|pigeon loft|bell tower|clock tower|
town hall|fire hydrant|traffic light|crosswalk|parking lot|skate park|tennis court|soccer field|bandstand|carousel|
oak tree|pine tree|willow tree|maple tree|cherry tree|hedge|bush|fence|gate|wall|bridge|
stream|creek|puddle|pond|field|meadow|hill|valley|path|trail|road|lane|street|corner|shop|cafe|church|tower|barn|
windmill|lighthouse|mailbox|lamp post|bench|statue|fountain|garden|orchard|vineyard|haystack|scarecrow|tractor|
wheelbarrow|bicycle|motorcycle|van|truck|bus|taxi|ambulance|police car|fire engine|cement mixer|digger|crane|
sailboat|canoe|ferry|kite|clothesline|chimney|rooftop|porch|balcony|playground|sandbox|seesaw|stump|log|boulder|
cave|waterfall|cliff|dune|island|marsh|beehive|anthill|bird nest|spider web|mushroom ring|sunflower|daisy|tulip|
rose bush|dandelion|thistle|clover patch|fern|ivy|moss|vine|pumpkin|cornfield|wheat field|sheep pen|pigsty|
henhouse|stable|kennel|doghouse|tree house|tent|hut|cabin|cottage|castle|palace|tunnel|ladder|swing""")
VEHICLES = _words("""car|bus|train|tram|boat|ferry|bike|tandem bike|wagon|cart|tractor|truck|van|taxi|plane|
rowboat|canoe|sled|pony cart|cable car|camper van|little red car|double-decker bus|steam train""")
CHORES = _words("""vacuum the rug|scrub the tub|feed the goldfish|brush the dog|empty the dishwasher|
match the mittens|butter the toast|wrap the sandwiches|squeeze the oranges|grate the cheese|measure the flour|
sew on a button|oil the squeaky door|trim the hedge|gather the eggs|recycle the bottles|
set the table|wash the dishes|dry the cups|sweep the floor|fold the laundry|water the plants|
feed the cat|walk the dog|make the bed|tidy the toy box|dust the shelves|peel the potatoes|shell the peas|
stir the soup|pick up the sticks in the yard|rake the leaves|wash the car|hang the washing on the line|
sort the socks|polish the spoons|carry in the groceries|fill the bird feeder|wipe the windows|mop the kitchen|
stack the firewood|weed the garden|bake the bread|knead the dough|fix a wobbly chair|paint the fence""")
# a job | why a child wants it
JOBS = _rows("""doctor|I want to help people feel better
nurse|I want to give people bandages and hugs
firefighter|I want to ride the big red truck and keep people safe
farmer|I want to grow carrots and feed the cows
baker|I want to make bread and cupcakes every morning
pilot|I want to fly above the clouds
astronaut|I want to walk on the moon
teacher|I want to read stories to a whole class
vet|I want to help sick puppies and kittens
painter|I want to paint the sky in every color
builder|I want to build houses with big windows
zookeeper|I want to feed the lions and the giraffes
gardener|I want to grow the biggest sunflower in the world
sailor|I want to sail across the ocean
train driver|I want to blow the train whistle
dancer|I want to spin and leap on a big stage
singer|I want to sing songs that make people smile
scientist|I want to find out how everything works
librarian|I want to be near books all day
chef|I want to cook soup for the whole town
mail carrier|I want to bring letters to everyone
police officer|I want to help people find their way
inventor|I want to build a robot that tidies my room
explorer|I want to find a jungle nobody has seen
fisherman|I want to catch a fish as big as a boat
mechanic|I want to fix cars and make them go
carpenter|I want to make chairs and tables out of wood
dentist|I want to help everyone have shiny teeth
musician|I want to play the violin and the drums
beekeeper|I want to make golden honey with the bees""")
BODY_PARTS = _words("knee|elbow|toe|finger|thumb|nose|chin|ankle|wrist|knuckle|shin|forehead")
INSTRUMENTS = _words("""xylophone|ukulele|mandolin|bugle|oboe|saxophone|glockenspiel|harmonica|kettle drum|
castanets|washboard|sitar|tin whistle|horn|fiddle|double bass|bassoon|piccolo|
drum|flute|violin|guitar|trumpet|piano|tambourine|triangle|banjo|harp|cello|recorder|
accordion|trombone|maracas|bagpipes|tuba|clarinet|bongos|cymbals""")

PLAY_PHRASES = _words("""jumped over the puddles one by one|shared a secret handshake|practiced their best bird calls|
drew chalk hopscotch squares|made a fort from fallen branches|spotted shapes in the treetops|
traced letters in the dirt|collected feathers for a hat|raced snails along a plank|hid behind the tallest sunflower|
balanced on a fallen log|cartwheeled across the lawn|splashed through a shallow brook|
whispered secrets behind a haystack|somersaulted on the soft grass|buried treasure under a bush|
pretended the floor was lava|held a parade with pots and spoons|searched for fairy footprints|
sailed bark boats in a gutter|built a dam of pebbles in the creek|watched ants carry crumbs|
played shadow puppets on the wall|made snow angels in the frost|invented a brand-new dance|
hopped like bunnies|twirled until they were dizzy|giggled at a funny joke|
wiggled their toes in the grass|tumbled down a soft hill|galloped like horses|crawled through a tunnel|
tiptoed past a sleeping cat|stomped like dinosaurs|marched like a band|paddled in the shallow water|
scribbled pictures in the sand|juggled three pinecones|bounced a ball against the wall|zoomed around like rockets|
chased each other in circles|peeked into a hollow log|sniffed the sweet flowers|stretched up tall like trees|
cuddled up under a tree|tickled each other until they laughed|bowed like kings and queens|wobbled on a log|
wriggled like worms|slid down a muddy bank|swung on a long rope|floated leaves down the stream|
blew on dandelion fluff|skipped stones across the water|hummed a silly song|clapped to a happy tune|
built a tower of pebbles|drew a map with a stick|hunted for four-leaf clovers|spun like tops|
played leapfrog over the logs|raced to the old gate|crept like sneaky foxes|made a crown of leaves|
counted the clouds|pretended to be pirates on a ship|pretended to be astronauts on the moon|
waddled like penguins|roared like lions|flapped their arms like birds|rolled like logs down the grass""")
DREAMS = _words("""a lighthouse that shone in seven colors|a squirrel who was king of the woods|a bicycle with wings|
a penguin who went surfing|an owl who taught school at midnight|a sandcastle as tall as a skyscraper|
a submarine full of singing crabs|a teapot that poured lemonade forever|a library where the books whispered|
a snail who won a race|a giraffe wearing a bow tie|a tiger who was scared of butterflies|a meadow of glowing
mushrooms|a hedgehog who knitted sweaters|a blizzard of marshmallows|a carousel that spun into the sky|
a rabbit detective with a magnifying glass|a goose who laid silver eggs|a tortoise who delivered the mail|
a dragon who loved pancakes|a unicorn with a rainbow mane|a castle made of candy|a pirate ship
sailing through the clouds|a mermaid who sang to the fish|a giant who was afraid of mice|a fairy as small as a
thumb|a wizard with a purple hat|a spaceship that flew to the stars|a planet covered in jelly|a comet with a silver
tail|a jungle full of talking parrots|a volcano that puffed out bubbles|a chest of golden treasure|a train that
flew over the mountains|a snowman who came to life|a whale who could fly|a garden where the flowers could talk|
a bear who baked muffins|a balloon that carried {h.him} over the sea|a cloud as soft as a pillow|a river of
chocolate milk|an elephant who danced ballet|a knight with a wooden sword|a forest of giant mushrooms|a moon made
of cheese|a kingdom under the sea|a robot who wanted a hug|a dinosaur who played the drums""")
CRAFTS = _rows("""a bird feeder|a pinecone;peanut butter;seeds;string
a puppet|an old sock;buttons;yarn;glue
a paper hat|newspaper;tape;a feather
a rocket|a cardboard tube;foil;glitter;tape
a boat|a milk carton;a straw;a paper sail
a necklace|beads;string;buttons
a mask|a paper plate;crayons;elastic;feathers
a wind chime|shells;string;a stick
a card|paper;markers;stickers
a crown|cardboard;glue;shiny paper;jewels made of foil
a castle|boxes;scissors;paint;tape
a kite|paper;sticks;string;ribbons
a robot|boxes;bottle caps;foil;glue
a picture frame|popsicle sticks;glue;paint
a drum|an old tin;a balloon;rubber bands""")
ANIMAL_FEATURES = _words("""a stripy tummy|speckled eggs in a nest|a crooked beak|muddy paws|a bright orange beak|
a ringed tail|velvety antlers|a white blaze on its face|a rumbly purr|a shaggy coat|a wiggly snout|
long ears|a fluffy tail|striped fur|big round eyes|soft feathers|tiny claws|webbed feet|
a bushy tail|long whiskers|brown spots|a hard shell|little horns|a pink nose|shiny scales|a curly tail|
a wet nose|floppy ears|a long neck|a short stubby tail|silky fur|a spotted coat|bright wings|a round belly|
tiny hooves|a fuzzy mane""")

# kind | what the sky did | what to wear | what the weather let them do
WEATHERS = _rows("""sunny|the sun was shining and the sky was clear|sun hat;sunglasses;sandals|play outside all day
hot|the sun was hot and the air was still|sun hat;shorts;sandals|splash in cool water
rainy|soft rain was falling from gray clouds|raincoat;rain boots|jump in the puddles
stormy|dark clouds rolled in and thunder rumbled|raincoat;rain boots|stay inside and build a blanket fort
windy|the wind was blowing the leaves around|jacket;scarf;cap|fly kites
snowy|fresh white snow covered the ground|snow boots;mittens;woolly hat;snow pants|build a snowman
foggy|thick gray fog hid the trees|sweater;jacket|play guessing games
cloudy|big fluffy clouds drifted across the sky|sweater;hoodie;jacket|look for shapes in the clouds
frosty|frost made the grass sparkle like sugar|mittens;gloves;woolly hat;earmuffs|slide on the ice
breezy|a cool breeze made the flowers dance|cardigan;vest;sweater|blow bubbles in the wind
warm|the day was warm and golden|shorts;sneakers;cap|have a picnic
chilly|the air was chilly and crisp|coat;scarf;gloves|jump in piles of leaves""")

# place | person who works there | sights | activities (base form)
PLACES = _rows("""the park|the park keeper|a big green slide;a mother duck with her ducklings;a boy flying a kite;an old man feeding the pigeons;a bench under a big oak tree;a fountain with coins in it|swing on the swings;feed the ducks;roll down the grassy hill;play on the slide
the beach|the lifeguard|tall waves rolling in;a red crab walking sideways;a sand castle with a flag;seagulls flying over the water;pretty shells on the sand;a boat far out at sea|build a sand castle;look for shells;splash in the waves;dig a deep hole
the zoo|the zookeeper|a tall giraffe eating leaves;a lion taking a nap;monkeys swinging from ropes;a gray elephant spraying water;penguins sliding into the water;a tiger pacing by its pool|watch the seals eat fish;wave at the monkeys;ride the little zoo train
the farm|the farmer|cows eating hay;a pig rolling in the mud;hens laying brown eggs;a red tractor;a barn full of hay;a goat standing on a box|collect eggs;feed the goats;ride on the hay wagon;brush the pony
the forest|the ranger|tall pine trees;a squirrel with a nut;mushrooms under a log;a deer drinking from a stream;a woodpecker tapping on a tree;a fox peeking from a bush|walk on the trail;look for pinecones;listen to the birds;build a little hut out of sticks
the lake|the fisherman|a white swan;little boats with sails;a fisherman in a floppy hat;frogs on lily pads;dragonflies over the water;a long wooden dock|skip stones;row a little boat;catch tadpoles in a net
the garden|the gardener|rows of carrots and beans;tall sunflowers;a busy bee on a rose;a scarecrow in an old hat;a snail on a lettuce leaf;a bird bath full of sparrows|pick tomatoes;water the flowers;dig for worms;plant seeds
the playground|the teacher|a tall slide;kids on the swings;a sandbox with buckets;a climbing frame;a seesaw going up and down;a merry little roundabout|play tag;climb the monkey bars;go down the slide;play hopscotch
the library|the librarian|shelves full of books;a big globe;a reading corner with soft pillows;a fish tank;a poster of a dragon;a cart of new books|read picture books;listen to a story;find a book about space
the bakery|the baker|warm loaves of bread;cupcakes with pink frosting;a tall cake with cherries on top;cookies shaped like stars;a big hot oven;trays of sticky buns|smell the fresh bread;pick a cupcake;watch the baker roll dough
the market|the fruit seller|piles of red apples;baskets of eggs;a man selling flowers;jars of golden honey;a lady selling warm pies;a stall full of cheese|buy fresh fruit;taste the cheese;count the coins
the museum|the guide|a giant dinosaur skeleton;old paintings in gold frames;a suit of armor;a model of the moon;shiny rocks in glass boxes;an old wooden canoe|look at the dinosaur bones;draw the paintings;whisper in the quiet halls
the aquarium|the diver|a shark swimming in circles;bright orange fish;a sea turtle;a jellyfish glowing in the dark;a starfish on a rock;an octopus hiding in a pot|touch a starfish;watch the fish;count the sea turtles
the school|the teacher|a classroom with colorful chairs;a chalkboard;paintings on the walls;a class hamster;a big round clock;a shelf of glue and glitter|paint pictures;sing songs;learn letters;count to one hundred
the toy store|the shopkeeper|shelves of teddy bears;a train going around a track;kites hanging from the ceiling;a box of marbles;a giant stuffed giraffe;a wall of board games|look at the new toys;try the toy drums;pick a small gift
the pet shop|the pet shop owner|puppies in a pen;goldfish in a tank;a parrot that could talk;hamsters running on wheels;kittens sleeping in a basket;a tortoise eating lettuce|hold a bunny;feed the fish;talk to the parrot
the circus|the clown|a clown on a tiny bike;a juggler with six balls;acrobats on a swing;a big striped tent;a man on stilts;a dog jumping through a hoop|watch the clowns;eat popcorn;clap for the acrobats
the fair|the man at the ticket booth|a big Ferris wheel;a merry-go-round with painted horses;balloons of every color;pink cotton candy;a prize booth with giant teddies;a pie contest|ride the merry-go-round;win a prize;eat cotton candy
the mountain|the guide|snow on the very top;a goat on a rock;a rushing stream;tiny purple flowers;an eagle high in the sky;a hut made of stone|climb the trail;look at the view;have a picnic on a flat rock
the river|the boatman|a wooden bridge;ducks floating by;a heron standing in the water;fish jumping;a little waterfall;a boat full of tourists|throw sticks off the bridge;dip their toes in the water;watch the boats
the pond|the old man with the fishing rod|frogs sitting on rocks;a family of ducks;tall reeds;tadpoles swimming;a turtle on a log;a blue dragonfly|catch tadpoles;feed the ducks;look for frogs
the meadow|the shepherd|wild flowers of every color;bees buzzing from bloom to bloom;a rabbit in the grass;butterflies everywhere;sheep with thick wool;a tall old tree|pick daisies;make flower crowns;run through the tall grass
the orchard|the farmer|rows of apple trees;baskets of red apples;a ladder against a tree;pears hanging low;a pony eating a fallen apple;bees around the blossoms|pick apples;climb the ladder;make apple juice
the pumpkin patch|the farmer|pumpkins of every size;a scarecrow with a smile;a hay maze;a big orange pumpkin as big as a car;crows on the fence;corn stalks taller than a man|pick a pumpkin;run through the hay maze;ride the tractor
the train station|the conductor|a long shiny train;a big clock over the door;people with suitcases;a man selling newspapers;pigeons on the roof;a red signal light|wave at the trains;buy tickets;listen to the whistle
the airport|the pilot|planes taking off;a huge window;people pulling bags;a moving walkway;a tower with blinking lights;a little luggage truck|watch the planes;ride the moving walkway;wave to the pilots
the harbor|the sailor|big ships with tall masts;fishing boats;a lighthouse;nets full of fish;seagulls begging for food;a crab trap on the dock|watch the boats come in;count the ships;look for seals
the swimming pool|the lifeguard|a tall diving board;kids in bright swim rings;a slide into the water;a lifeguard in a high chair;blue tiles on the floor;floating noodles|jump into the water;swim across the pool;play with floating noodles
the ice rink|the skating coach|people skating in circles;a girl spinning on one foot;a big machine that smooths the ice;cups of hot cocoa;kids holding the wall|skate around the rink;hold hands and glide;drink hot cocoa
the snowy hill|the man with the red sled|kids on sleds;a snowman with a carrot nose;a dog rolling in the snow;snowballs flying;a hill as white as sugar|ride a sled;make snow angels;have a snowball fight
the flower shop|the florist|buckets of roses;pots of tulips;a cactus with a pink flower;a cat asleep by the door;ribbons of every color;a wreath of daisies|smell the roses;pick a bunch of flowers;tie a pretty ribbon
the doctor's office|the doctor|a waiting room with toys;a fish tank;a scale for weighing;a jar of stickers;a chart with letters;a skeleton made of plastic|get a checkup;read a book;pick a sticker
the fire station|the firefighter|a huge red fire truck;long hoses;shiny helmets;a pole to slide down;a spotted dog;boots lined up by the door|sit in the fire truck;try on a helmet;ring the bell
the post office|the mail carrier|stacks of letters;a wall of little boxes;a scale for packages;stamps with birds on them;a big blue mailbox|mail a letter;buy stamps;send a package to grandma
the campsite|the camp ranger|tents in a circle;a crackling campfire;a lake with a canoe;tall trees full of owls;a picnic table|roast marshmallows;tell stories by the fire;look at the stars
the backyard|the neighbor|a tree house;a swing on a rope;a vegetable patch;a kiddie pool;a doghouse;a bird feeder full of seeds|play in the tree house;have a picnic;catch fireflies
the ice cream shop|the ice cream man|tubs of ice cream in every color;cones stacked high;jars of sprinkles;a bell on the door;a spinning stool|taste every flavor;pick a cone;add sprinkles
the old castle|the guard|tall stone towers;a bridge over a moat;a room full of old shields;a spiral staircase;flags blowing in the wind|climb the towers;play knights and dragons;look for secret doors
the island|the lighthouse keeper|palm trees;a little dock;white sand;turtles on the beach;a lighthouse with a red top|look for treasure;swim in the clear water;collect coconuts
the grocery store|the cashier|rows of cereal boxes;a big fish counter;a cart with a wobbly wheel;a pyramid of oranges;a freezer full of ice cream|push the cart;find the milk;pick out fruit
the theater|the actor|red velvet seats;a big curtain;bright lights on the stage;a man in a lion costume;a puppet show|watch a play;clap at the end;laugh at the funny parts
the bus stop|the bus driver|a yellow bus;people waiting with bags;a bench with a roof;a map of the town;a girl with a big umbrella|ride the bus;look out the window;ring the bell to stop""")

# Prepositions and the household things that go with them: where a lost toy may be.
HIDING_SPOTS = {
    "under": _words("""the bed|the table|the sofa|the couch|the big chair|the desk|the bench|the rug|a pillow|
the stairs|the porch|the car seat|the slide|a pile of leaves|the bush|the trampoline|the kitchen sink|a blanket|
the swing|the picnic table|the doormat|the flower bed|a bucket|the wheelbarrow"""),
    "behind": _words("""the sofa|the door|the curtains|the fridge|the bookshelf|the piano|the washing machine|
the big tree|the shed|the fence|the garbage can|the coat rack|the oven|the laundry basket|the toy box|a big rock|
the clock|the dresser|the television|the heater"""),
    "inside": _words("""the toy box|a boot|the laundry basket|the closet|the kitchen drawer|a shoe|the mailbox|
the doghouse|a flower pot|the wagon|the bathtub|the sandbox|a cardboard box|the cookie jar|the picnic basket|
the backpack|a rain boot|the dollhouse|the bread box|a pillowcase|the sewing box|the tool box|the shed|the car"""),
    "on top of": _words("""the fridge|the bookshelf|the wardrobe|the cupboard|the shed roof|the doghouse|
the piano|the cabinet|the tall lamp|the garden wall|the washing machine|the dresser"""),
    "next to": _words("""the garden gate|the bird bath|the sink|the flower pots|the back door|the watering can|
the compost bin|the garden hose|the rain barrel|the woodpile|the bicycle rack|the stove"""),
}
STUCK_SPOTS = _rows("""high up in a tall tree|a long stick;a ladder;a broom
on the roof of the shed|a ladder;a rake;a long pole
in the middle of the pond|a fishing net;a long stick;a toy boat
at the bottom of a deep hole|a rope;a bucket on a string;a garden hook
stuck in thick mud|a shovel;rubber boots;a wooden board
behind a high fence|a ladder;a step stool;a long stick
on a branch over the river|a long pole;a net;a rope
under a heavy rock|a wooden plank;a strong lever;two hands and a push
in a thorny bush|garden gloves;a long stick;a pair of tongs
up on a high shelf|a step stool;a chair;a long spoon""")
ATTEMPT_FAILS = _words("""it was too short|it slipped out of {h.his} hands|{h.he} could not reach|it wobbled and fell|
it bent in the middle|the wind blew it away|it was much too heavy|it got stuck too|it broke with a snap|
{h.he} got tangled up|it splashed into the water|it made things worse""")

# A fear: what it is | what facing it means | what turned out to be true
FEARS = _rows("""the dark|turn off the light and look around|the scary shape was only a coat on a chair
the big slide|climb up the big slide and slide down|the slide was fast and fun
thunder|sit by the window during the storm|thunder was only a loud noise far away
deep water|put {h.his} feet in the lake|the water was cool and nice
the big dog next door|say hello to the big dog|the dog only wanted to play
the loud vacuum|watch the vacuum clean the floor|the vacuum was just a noisy machine that ate dust
the tall ladder|climb the tall ladder to the tree house|the view from the top was wonderful
the doctor|sit in the big chair at the doctor's office|the doctor was kind and gave out stickers
the shadows on the wall|look closely at the shadows|the shadows were only branches of a tree
bees|walk through the flower garden|the bees were busy with the flowers
the ocean waves|walk into the waves|the waves only tickled {h.his} toes
the big yellow bus|get on the big yellow bus|the bus was full of friendly kids
the first day of school|walk into the new classroom|the teacher had a smile as warm as the sun
the dentist|open wide for the dentist|it did not hurt at all
the goat at the farm|feed the goat a carrot|the goat had a soft nose and funny eyes
the high swing|swing up high|it felt like flying
spiders|look at a spider in its web|the spider was tiny and busy
the noise of fireworks|watch the fireworks from a blanket|the sky filled with colors like flowers
the dark cellar|walk down into the cellar with a flashlight|there were only jars of jam and old boxes
the big wave pool|float in the wave pool|the waves rocked {h.him} like a cradle""")
SKILLS = _rows("""ride a bike|wobbled and fell down on the grass|rode all the way down the street
tie {h.his} shoes|made a big knot instead of a bow|tied a perfect bow
swim|splashed and sank and had to grab the side of the pool|swam from one side of the pool to the other
jump rope|got the rope stuck on {h.his} feet|jumped ten times in a row
whistle|only made a funny puff of air|whistled a happy little song
fly a kite|watched the kite crash into the grass|made the kite dance high in the sky
read a book|got stuck on the long words|read a whole story out loud
catch a ball|dropped the ball again and again|caught the ball with both hands
build a tall tower of blocks|watched the tower fall over|built a tower taller than a chair
draw a horse|drew a horse that looked like a potato|drew a horse with a long, shiny tail
skate|slipped and sat down with a bump|skated around the whole rink
climb the big tree|slid back down to the ground|climbed up to the first big branch
write {h.his} name|wrote the letters backwards|wrote {h.his} name in big neat letters
play the piano|pressed all the wrong keys|played a little song from start to end
button {h.his} coat|put the buttons in the wrong holes|buttoned every button the right way
do a cartwheel|landed in a heap on the grass|did a cartwheel as round as a wheel
count to twenty|forgot what came after twelve|counted all the way to twenty
hop on one foot|fell over after two hops|hopped across the whole yard
paddle a canoe|went around in circles|paddled straight across the lake
plant a garden|planted the seeds too deep|grew a row of tiny green sprouts""")
TREATS = _rows("""a cake|flour;eggs;sugar;butter;milk|mixed it in a big bowl and baked it in the oven
cookies|flour;butter;sugar;oats;raisins|rolled the dough into balls and baked them
pancakes|flour;milk;eggs;a pinch of salt|poured the batter into a hot pan and flipped them
a fruit salad|apples;grapes;bananas;strawberries|cut the fruit into little pieces and stirred it
lemonade|lemons;water;sugar;ice|squeezed the lemons and stirred everything in a big jug
sandwiches|bread;cheese;tomatoes;lettuce|put everything between two slices of bread and cut them into triangles
a pizza|dough;tomato sauce;cheese;mushrooms|spread the sauce, added the cheese and baked it
soup|carrots;potatoes;onions;peas|chopped the vegetables and let them bubble in a pot
muffins|flour;blueberries;milk;eggs|filled little paper cups and baked them until they were golden
a pie|apples;cinnamon;sugar;pastry|filled the pastry with apples and baked it until it smelled wonderful""")
BREAKABLES = _words("""vase|cup|plate|flower pot|lamp|mirror|bowl|picture frame|cookie jar|teapot|window|clock|
glass bird|music box|snow globe|tower of cups|jar of buttons""")
ANIMAL_TROUBLES = _rows("""had a sore foot|made a soft bed in a box|the little animal got well
was stuck in a net|untied the net bit by bit|the little animal was free
had lost its mother|followed the sound of calling|the mother found her baby
was stuck on its back|gently turned it over|it walked away happily
was caught on a fence|lifted it over the wire|it ran off into the grass
was too cold to move|wrapped it in a warm scarf|it stopped shaking
could not get out of a bucket|tipped the bucket over slowly|it hopped out
was hungry and thin|shared a little food|it ate every crumb""")
MORALS = _words("""kindness is like a seed that grows|listening is a way of caring|every helper matters|
it is fine to make mistakes if you learn from them|curious questions lead to wonderful answers|
home is wherever your family is|a gentle voice works better than a shout|waiting your turn is fair to everyone|
it is good to ask for help|friends make every day better|being kind is always worth it|
telling the truth makes things better|trying again is how you learn|sharing makes fun bigger|
even small friends can do big things|it is okay to feel scared and be brave anyway|
a change of plans can still be fun|patience helps you fix many things|saying sorry can heal a hurt|
a good friend listens|hard work makes sweet rewards|being careful keeps things safe""")
ENDINGS = _words("""That night, {h.name} fell asleep with a big smile.|It was a day {h.name} would always remember.|
The sun went down, and it had been a very good day.|And from then on, every day felt a little brighter.|
{h.Name} hugged {a.noun_the} and said, "Thank you for today."|The end.|
Then they all went home for {food}.|{h.Name} could not wait for the next adventure.""")


# ------------------------------------------------------------------------------ characters
class Character:
    """A person or animal in a story: name, kind, pronouns, and the facts later sentences reuse."""

    def __init__(self, name: str, kind: str, gender: str, **facts):
        self.name, self.kind = name, kind
        self.he, self.him, self.his = PRONOUNS[gender]
        self.__dict__.update(facts)

    @property
    def Name(self) -> str:  # noqa: N802 -- '{h.Name}' at the start of a sentence
        return self.name[:1].upper() + self.name[1:]

    @property
    def He(self) -> str:  # noqa: N802
        return self.he.capitalize()

    @property
    def His(self) -> str:  # noqa: N802
        return self.his.capitalize()


def with_article(phrase: str) -> str:
    """'a red kite', 'an orange kite', 'an old doll'."""
    first = phrase.split()[0].lower()
    vowel = first[0] in "aeiou" and not first.startswith(("uni", "use", "one", "eu"))
    return ("an " if vowel else "a ") + phrase


def make_child(rng: random.Random, avoid: set[str]) -> Character:
    """A child or an animal with a name not in ``avoid``, a trait, a home, a toy, a food and a hobby."""
    gender = rng.choice(("he", "she"))
    if rng.random() < 0.3:
        animal = rng.choice(ANIMALS)
        kind, names, home = animal[0], PET_NAMES, animal[2]
    else:
        kind = "boy" if gender == "he" else "girl"
        names, home = (BOY_NAMES if gender == "he" else GIRL_NAMES), None
    name = rng.choice(names)
    while name in avoid:
        name = rng.choice(names)
    avoid.add(name)
    world = random.Random(_hash_int("world", kind, name))    # who this character is, in every story
    if kind not in ("boy", "girl"):
        gender = world.choice(("he", "she"))
    colour, look, toy = world.choice(COLOURS), world.choice(LOOKS), world.choice(TOYS)
    return Character(name, kind, gender, trait=world.choice(TRAITS), home=home, colour=colour, look=look, toy=toy,
                     toy_full=f"{look} {colour} {toy}", food=world.choice(FOODS), hobby=world.choice(HOBBIES),
                     is_animal=kind not in ("boy", "girl"))


def make_adult(rng: random.Random, child: Character) -> Character:
    """The child's grown-up (a parent, grandparent, neighbour, teacher...), called 'her grandma' and 'Grandma'."""
    noun, address, gender = rng.choice(ADULTS)
    adult = Character(address, noun, gender)
    adult.noun_the = f"{child.his} {noun}"
    return adult


# ------------------------------------------------------------------------------ story state
class Story:
    """The facts one story is written from, and the sentences written so far."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        names: set[str] = set()
        self.h = make_child(rng, names)
        self.f = make_child(rng, names)
        self.a = make_adult(rng, self.h)
        self.place = rng.choice(PLACES)
        self.weather = rng.choice(WEATHERS)
        self.paragraphs: list[list[str]] = [[]]
        self.plots: list[str] = []     # names of the plot functions told, for the lesson at the end

    def pick(self, options):
        return self.rng.choice(options)

    def say(self, template: str, **extra) -> None:
        """Fill a template ('{h.He} saw {f.name}.') with the story's facts and add it."""
        slots = {"h": self.h, "f": self.f, "a": self.a, "place": self.place[0], "person": self.place[1],
                 "Person": self.place[1].capitalize()}
        slots.update(extra)
        text = template.format(**slots)
        self.paragraphs[-1].append(text.format(**slots) if "{" in text else text)

    def say_one(self, *templates: str, **extra) -> None:
        self.say(self.pick(templates), **extra)

    def new_paragraph(self) -> None:
        if self.paragraphs[-1]:
            self.paragraphs.append([])

    def text(self) -> str:
        story = "\n\n".join(" ".join(sentences) for sentences in self.paragraphs if sentences)
        return SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), story)


# ------------------------------------------------------------------------------ beats
def introduce(s: Story) -> None:
    """Who the hero is, where they live, what they love."""
    h = s.h
    intro = with_article(f"{h.trait} {h.kind}")
    home = h.home or s.pick(("a small house near the woods", "a little town by the sea", "a busy city",
                             "a quiet village", "a yellow house with a red door", "a farm with a big barn",
                             "a cottage at the end of a long lane", "a tall building with many windows",
                             "a house next to a park", "a blue house on a hill"))
    if s.rng.random() < 0.25:
        s.say(f"Once upon a time, in {home}, there lived {intro} named {{h.name}}.")
    else:
        s.say_one(f"Once upon a time, there was {intro} named {{h.name}}.", f"{{h.Name}} was {intro}.",
                  f"There was once {intro} called {{h.name}}.")
        s.say_one(f"{{h.He}} lived in {home}.", f"{{h.His}} home was {home}.",
                  f"{{h.He}} lived in {home} with {{a.noun_the}}.")
    extras = [
        ("{h.He} had " + with_article(h.toy_full) + " that {h.he} took everywhere.",
         "{h.His} favorite toy was " + with_article(h.toy_full) + "."),
        ("More than anything, {h.he} loved to {h.hobby}.", "Every day, {h.name} liked to {h.hobby}."),
        ("{h.His} favorite food was {h.food}.", "{h.He} could eat {h.food} all day long."),
        ("{h.His} best friend was " + with_article(f"{s.f.trait} {s.f.kind}") + " named {f.name}.",),
    ]
    for group in s.rng.sample(extras, s.rng.randint(1, 2)):
        s.say(s.pick(group))


def set_out(s: Story) -> None:
    """The day, the weather, and going to the place; a question about where they go, and its answer."""
    kind, sky, wear, weather_fun = s.weather
    s.new_paragraph()
    s.say(f"{s.pick(WHENS)}, {sky}.")
    s.say_one("{a.Name} said, \"Let's go to {place} today!\"", "{h.Name} and {a.noun_the} went to {place}.",
              "{h.Name} and {f.name} wanted to go to {place}.", "{a.Name} took {h.name} and {f.name} to {place}.")
    if s.rng.random() < 0.4:
        s.say_one('"Where are we going?" asked {h.name}. "To {place}," said {a.name}.',
                  '"Can {f.name} come too?" asked {h.name}. "Of course," said {a.name}.',
                  '"What should I wear?" asked {h.name}. "Your {wear}," said {a.name}, "because it is {kind}."',
                  '"Will we see {sight}?" asked {h.name}. "Maybe," said {a.name} with a wink.',
                  wear=s.pick(wear), kind=kind, sight=s.pick(s.place[2]))
    if s.rng.random() < 0.3:
        s.say_one("{h.He} put on {h.his} {wear}.", "{h.He} packed {h.food} in a bag.",
                  "It was a good day to {fun}.", wear=s.pick(wear), fun=weather_fun)


def on_the_way(s: Story) -> None:
    """The trip there: what the hero wore, how they went, and things they passed."""
    if s.rng.random() < 0.5:
        s.say_one("{h.Name} wore {h.his} {c} {x}.", "{h.Name} put on {h.his} favorite {x}.",
                  c=s.pick(COLOURS), x=s.pick(CLOTHES))
    s.say_one("They went in {v}.", "They rode to {place} in {v}.", "They took {v} to get there.",
              v=with_article(s.pick(VEHICLES)))
    for _ in range(s.rng.randint(0, 1)):
        thing = with_article(f"{s.pick(WAYSIDE_ADJECTIVES)} {s.pick(WAYSIDE_THINGS)}")
        s.say_one("On the way, they passed {x}.", "They went by {x}.", "{h.Name} waved at {x}.",
                  "Along the road there was {x}.", x=thing)


def dream_job(s: Story) -> None:
    """A question about growing up, and an answer that fits it."""
    job, reason = s.pick(JOBS)
    s.say(f'"What do you want to be when you grow up?" asked {{f.name}}. '
          f'"{with_article(job).capitalize()}," said {{h.name}}. "Why?" asked {{f.name}}. "Because {reason}."')


def chores(s: Story) -> None:
    """Helping at home, maybe with music, maybe with a small bump."""
    picked = s.rng.sample(CHORES, 2)
    s.say_one("At home, {h.name} helped {a.noun_the} {x} and {y}.", "Before supper, {h.name} had to {x} and {y}.",
              x=picked[0], y=picked[1])
    roll = s.rng.random()
    if roll < 0.4:
        s.say("Then {a.name} played the {i}, and {h.name} danced around the kitchen.", i=s.pick(INSTRUMENTS))
    elif roll < 0.7:
        s.say('{h.He} bumped {h.his} {b}. "Ouch!" {h.he} said. "Let me see," said {a.name}, and gave it a kiss.',
              b=s.pick(BODY_PARTS))


def play(s: Story) -> None:
    """Some play at the place."""
    picked = s.rng.sample(PLAY_PHRASES, s.rng.randint(1, 2))
    s.say_one("{h.Name} and {f.name} {x}.", "Then they {x}.", "For a while, the two friends {x}.", x=picked[0])
    if len(picked) > 1:
        s.say_one("After that, they {x}.", "Later, they {x}.", x=picked[1])


def meet_animal(s: Story) -> None:
    """An animal met on the way, described, and a question about it."""
    animal, sound, home = s.pick(ANIMALS)
    s.say(f"Then they met {with_article(animal)} with {s.pick(ANIMAL_FEATURES)}. It {sound}.")
    s.say_one(f'"Where do you live?" asked {{h.name}}. The {animal} could not talk, but {{a.name}} said, '
              f'"It lives in {home}."', '"Can I pet it?" asked {h.name}. "Gently," said {a.name}.')


def craft(s: Story) -> None:
    """Making something with the hands."""
    thing, materials = s.pick(CRAFTS)
    used = s.rng.sample(materials, min(len(materials), 2))
    s.say(f"After lunch, {{h.name}} and {{a.noun_the}} made {thing} out of {used[0]} and {used[1]}.")
    s.say_one('"Is it finished?" asked {h.name}. "Almost," said {a.name}. "It just needs a little love."',
              "{h.Name} showed it to {f.name}, who said it was wonderful.")


def dream(s: Story) -> None:
    s.say_one("That night, {h.name} dreamed of {x}.", "In {h.his} dreams, {h.name} met {x}.", x=s.pick(DREAMS))


def look_around(s: Story) -> None:
    """One to three things seen at the place, and maybe something done there."""
    sights = s.rng.sample(s.place[2], s.rng.randint(1, 2))
    first = s.pick(("When they got there, {h.name} saw {x}.", "At {place}, they saw {x}.", "First, they saw {x}."))
    s.say(first, x=sights[0])
    for sight in sights[1:]:
        s.say_one("Then {h.he} saw {x}.", "{h.He} also spotted {x}.", "Next, they found {x}.",
                  "{h.Name} pointed. \"Look, {x}!\"", x=sight)
    if s.rng.random() < 0.4:
        s.say_one("They decided to {do}.", "{h.Name} and {f.name} ran to {do}.", "{Person} let them {do}.",
                  do=s.pick(s.place[3]))
    if s.rng.random() < 0.15:
        animal, sound, _ = s.pick(ANIMALS)
        s.say(f"{with_article(animal).capitalize()} {sound} at them, and {{h.name}} laughed.")


def attempts(s: Story, tools, success: str, count: int) -> None:
    """Tries that fail, then one that works: each a tool, what went wrong, and a feeling."""
    tools = list(tools)
    s.rng.shuffle(tools)
    for tool in tools[:count - 1]:
        s.say_one("First, {h.name} tried {tool}. But {fail}.", "Then {h.he} tried {tool}, but {fail}.",
                  "{h.Name} got {tool}. Sadly, {fail}.", tool=tool, fail=s.pick(ATTEMPT_FAILS))
        if s.rng.random() < 0.5:
            s.say_one('"Don\'t give up," said {f.name}.', '"Try again," said {a.name}.',
                      "{h.Name} felt {bad}, but {h.he} did not stop.", bad=s.pick(BAD_FEELINGS))
    last = tools[min(count, len(tools)) - 1]
    s.say_one("At last, {h.he} used {tool}, and {success}.", "Then {f.name} had an idea: {tool}! This time, {success}.",
              tool=last, success=success)


# ------------------------------------------------------------------------------ plots
def plot_lost(s: Story) -> None:
    prep = s.rng.sample(sorted(HIDING_SPOTS), 3)
    spots = [f"{p} {s.pick(HIDING_SPOTS[p])}" for p in prep]
    s.new_paragraph()
    s.say_one("When it was time to go home, {h.name} could not find {h.his} {h.colour} {h.toy}.",
              "Back at home, {h.name} looked for {h.his} {h.toy}, but it was gone.")
    s.say_one('"Where is my {h.toy}?" {h.name} asked. {h.He} felt very {bad}.',
              '"Oh no! My {h.toy} is lost!" cried {h.name}.', bad=s.pick(BAD_FEELINGS))
    s.say('"What does it look like?" asked {a.name}. "It is {h.look} and {h.colour}," said {h.name}.')
    s.new_paragraph()
    for spot in spots[:2]:
        s.say_one("{h.Name} looked {x}.", "They searched {x}.", "{f.Name} checked {x}.", x=spot)
    s.say("But the {h.toy} was not there.")
    s.say_one('"Think, {h.name}. Where did you play with it last?" asked {a.name}.',
              '"Let\'s look one more time, together," said {f.name}.')
    s.say_one("Then {h.name} saw something {h.colour} {x}. It was the {h.toy}!",
              '"I see it!" shouted {f.name}. The {h.toy} was {x}.', x=spots[2])
    s.say("{h.Name} hugged {h.his} {h.toy} tight. {h.He} felt {good}.", good=s.pick(GOOD_FEELINGS))


def plot_stuck(s: Story) -> None:
    spot, tools = s.pick(STUCK_SPOTS)
    s.new_paragraph()
    s.say_one("{h.Name} threw {h.his} {h.toy} up high, and it landed {x}.",
              "Oh no! {h.Name}'s {h.colour} {h.toy} ended up {x}.",
              "{f.Name} dropped {h.name}'s {h.toy} by accident, and now it was {x}.", x=spot)
    s.say_one('"How will I get it back?" asked {h.name}. "We will find a way," said {f.name}.',
              '"Can you reach it?" asked {f.name}. "No, it is too far," said {h.name}.')
    s.new_paragraph()
    attempts(s, tools, "the {h.toy} came free", s.rng.randint(2, 3))
    s.say_one("{h.Name} and {f.name} cheered.", "\"We did it!\" shouted {h.name}.")


def plot_rescue(s: Story) -> None:
    animal, sound, home = s.pick(ANIMALS)
    trouble, help_, result = s.pick(ANIMAL_TROUBLES)
    s.new_paragraph()
    s.say(f"Near {{place}}, {{h.name}} heard a small sound. It was {with_article(animal)} that {trouble}.")
    s.say_one('"What is wrong, little {x}?" asked {h.name}. The {x} {sound} softly.',
              '"Poor thing," said {f.name}. "What can we do?" "We can help it," said {h.name}.',
              x=animal, sound=sound)
    s.new_paragraph()
    s.say_one("{h.Name} asked {a.noun_the} for help.", "{h.Name} thought hard. Then {h.he} had an idea.")
    s.say(f"Together, they {help_}. Soon, {result}.")
    s.say_one(f"The {animal} went back to {home}.", f"Later, the {animal} {sound} as if to say thank you.")
    s.say_one('"You have a kind heart," said {a.name}.', '"Helping feels good," said {h.name}.')


def plot_fear(s: Story) -> None:
    fear, face, truth = s.pick(FEARS)
    s.new_paragraph()
    s.say(f"But {{h.name}} had a secret. {{h.He}} was afraid of {fear}.")
    s.say('"What if something bad happens?" {h.he} asked. "Being brave does not mean you are not scared," '
          'said {a.name}. "It means you try anyway."')
    if s.rng.random() < 0.5:
        s.say('"I will stay with you," said {f.name}.')
    s.new_paragraph()
    s.say_one(f"{{h.Name}} took a deep breath. Slowly, {{h.he}} began to {face}.",
              f"{{h.Name}} counted to three. Then {{h.he}} tried to {face}.")
    s.say(f"To {{h.his}} surprise, {truth}.")
    s.say('"I did it!" {h.name} shouted. {h.He} felt {good}.', good=s.pick(GOOD_FEELINGS))


def plot_skill(s: Story) -> None:
    skill, fail, win = s.pick(SKILLS)
    s.new_paragraph()
    s.say(f"{{h.Name}} wanted to learn to {skill}.")
    s.say('"Can you teach me?" asked {h.name}. "Of course," said {a.name}.')
    tries = (f"{{h.Name}} tried, but {{h.he}} {fail}.", f"On the next try, {{h.he}} {fail} again.",
             f"{{h.He}} tried once more, but {{h.he}} {fail}.")
    for attempt in tries[:s.rng.randint(1, 3)]:
        s.say(attempt)
        s.say_one('"Practice makes progress," said {a.name}.', '"Keep going!" cheered {f.name}.',
                  "{h.Name} felt {bad}, but {h.he} kept trying.", bad=s.pick(BAD_FEELINGS))
    s.new_paragraph()
    s.say(f"Then one day, {{h.name}} {win}!")
    s.say_one('"I knew you could do it," said {a.name}.', '"Hooray!" shouted {f.name}.')


def plot_quarrel(s: Story) -> None:
    s.new_paragraph()
    s.say('"Can I play with your {h.toy}?" asked {f.name}. "No, it is mine!" said {h.name}.')
    s.say_one("{f.Name} walked away, feeling {bad}.", "{f.Name} sat down by {f.him}self.", bad=s.pick(BAD_FEELINGS))
    s.say_one("Playing alone was not much fun.", "{h.Name} felt {bad} inside.", bad=s.pick(BAD_FEELINGS))
    s.say('"How would you feel if {f.name} did not share with you?" asked {a.name}.')
    s.new_paragraph()
    s.say('{h.Name} walked over to {f.name}. "I am sorry. Do you want to play with my {h.toy}?" {h.he} asked. '
          '"Yes, please!" said {f.name}.')
    s.say("They played {game} together, and {f.name} shared {f.his} {f.food}.", game=s.pick(GAMES))


def plot_weather(s: Story) -> None:
    kind, sky, wear, fun = s.weather
    other = s.pick([row for row in WEATHERS if row[0] != kind])
    s.new_paragraph()
    s.say(f"But after a while, {other[1]}.")
    s.say('"Now our day is ruined!" cried {h.name}. "Is it?" asked {a.name}. "Let\'s see what we can do."')
    s.say(f"So they decided to {other[3]}.")
    s.say_one("It was even more fun than the old plan.", "{h.Name} laughed and laughed.")


def plot_treat(s: Story) -> None:
    treat, things, method = s.pick(TREATS)
    picked = s.rng.sample(things, min(len(things), s.rng.randint(2, 4)))
    s.new_paragraph()
    s.say(f"Back at home, {{h.name}} wanted to make {treat} for {{f.name}}.")
    s.say(f'"What do we need?" asked {{h.name}}. "{", ".join(picked[:-1]).capitalize()} and {picked[-1]}," said {{a.name}}.')
    s.say(f"They {method}.")
    if s.rng.random() < 0.5:
        s.say_one("Oops! {h.Name} spilled some on the floor. They laughed and cleaned it up.",
                  "It took a long time, but {h.name} was patient.")
    s.say('When {f.name} came over, {f.he} tasted it. "Yum! Did you make this?" {f.he} asked. '
          '"Yes, all by ourselves," said {h.name}.')


def plot_broken(s: Story) -> None:
    thing = s.pick(BREAKABLES)
    s.new_paragraph()
    s.say(f"Back at home, {{h.name}} was playing {s.pick(GAMES)} inside, and crash! {{h.He}} broke {{a.noun_the}}'s {thing}.")
    s.say_one('"Maybe no one will know," {h.he} whispered.', "{h.Name} wanted to hide behind the sofa.")
    s.say(f'"Who broke my {thing}?" asked {{a.name}}. "It was me. I am sorry," said {{h.name}}.')
    s.say_one('"Thank you for telling the truth," said {a.name}. "Let\'s fix it together."',
              '"Accidents happen," said {a.name}. "I am glad you were honest."')
    s.say("They found some glue and fixed it piece by piece.")


def plot_surprise(s: Story) -> None:
    s.new_paragraph()
    s.say("It was almost {f.name}'s birthday, and {h.name} wanted to make a surprise.")
    s.say_one('"What does {f.name} like?" asked {a.name}. "{food}!" said {h.name}.',
              '"What should we give {f.him}?" asked {h.name}. "Something you make yourself," said {a.name}.',
              food=s.f.food.capitalize())
    s.say("They made a card with {n} {c} stars and wrapped {with_toy} in {c2} paper.", n=s.pick(NUMBERS),
          c=s.pick(COLOURS), c2=s.pick(COLOURS), with_toy=with_article(f"{s.pick(LOOKS)} {s.pick(TOYS)}"))
    s.say('"Surprise!" they shouted. {f.Name} was so {good}.', good=s.pick(GOOD_FEELINGS))


# What each plot can teach; the ending picks a lesson from the plots the story told.
LESSONS = {
    "plot_lost": _words("it helps to stay calm and ask for help|things are easier to find when you put them away|"
                        "friends make a hard search shorter"),
    "plot_stuck": _words("trying again is how you learn|two heads are better than one|"
                         "there is more than one way to solve a problem"),
    "plot_rescue": _words("being kind is always worth it|even small friends can do big things|"
                          "every creature needs a helping hand sometimes"),
    "plot_fear": _words("it is okay to feel scared and be brave anyway|things are often less scary when you face them|"
                        "a friend by your side makes you braver"),
    "plot_skill": _words("practice makes hard things easy|trying again is how you learn|"
                         "it is fine to make mistakes if you learn from them"),
    "plot_quarrel": _words("sharing makes fun bigger|saying sorry can heal a hurt|a good friend shares"),
    "plot_weather": _words("a change of plans can still be fun|there is fun in every kind of weather"),
    "plot_treat": _words("hard work makes sweet rewards|food tastes better when you make it for a friend"),
    "plot_broken": _words("telling the truth makes things better|patience helps you fix many things|"
                          "being careful keeps things safe"),
    "plot_surprise": _words("the best gifts come from the heart|making someone happy makes you happy too"),
}

PLOTS = (plot_lost, plot_stuck, plot_rescue, plot_fear, plot_skill, plot_quarrel, plot_weather, plot_treat,
         plot_broken, plot_surprise)


def snack(s: Story) -> None:
    s.say_one("Later, they sat on a blanket and ate {x} and {y}.", "For lunch, {a.name} gave them {x} with {y}.",
              x=s.h.food, y=s.pick(FOODS))
    s.say_one('"Do you like {x}?" asked {f.name}. "I love {x}!" said {h.name}.',
              '"Can I have some more?" asked {h.name}. "Just a little," said {a.name}.', x=s.h.food)


def conclude(s: Story) -> None:
    """A feeling, maybe a lesson, and an ending."""
    s.new_paragraph()
    if s.rng.random() < 0.6:
        lessons = [lesson for plot in s.plots for lesson in LESSONS[plot]] or list(MORALS)
        s.say_one("{h.Name} learned that {m}.", '"Today I learned that {m}," said {h.name}.',
                  "{a.Name} smiled. \"You see? {M}.\"", m=(m := s.pick(lessons)), M=m[:1].upper() + m[1:])
    s.say(s.pick(ENDINGS), food=s.pick(FOODS))


def write_story(rng: random.Random) -> str:
    """One whole story: introduction, setting out, sights, a plot, maybe a snack, and an ending."""
    s = Story(rng)
    introduce(s)
    set_out(s)
    if rng.random() < 0.35:
        on_the_way(s)
    look_around(s)
    for beat, chance in ((play, 0.2), (meet_animal, 0.2), (dream_job, 0.15)):
        if rng.random() < chance:
            beat(s)
    plots = rng.sample(PLOTS, 2 if rng.random() < 0.08 else 1)
    for plot in plots:
        s.plots.append(plot.__name__)
        plot(s)
        if rng.random() < 0.1:
            snack(s)
    for beat, chance in ((chores, 0.15), (craft, 0.12)):
        if rng.random() < chance:
            beat(s)
    conclude(s)
    if rng.random() < 0.2:
        dream(s)
    return s.text()


# ------------------------------------------------------------------------------ public API
def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; accepted names: {', '.join(SPLITS)}")
    return SPLITS[split]


def _hash_int(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


def split_of(story: str) -> str:
    """The split a story's text belongs to (one bit of its BLAKE2 hash): the splits cannot share a story."""
    bit = hashlib.blake2b(story.encode(), digest_size=1).digest()[0] & 1
    return next(split for split, split_bit in SPLIT_BIT.items() if split_bit == bit)


def story_at(split: str, index: int, seed: int = 0) -> str:
    """Story ``index`` of ``split``: drawn until its text belongs to that split (two draws on average)."""
    split = _split_name(split)
    for attempt in range(1000):
        story = write_story(random.Random(_hash_int("story-grammar", seed, split, index, attempt)))
        if split_of(story) == split:
            return story
    raise RuntimeError("no story found for this split")   # unreachable in practice: 2**-1000


def iter_stories(split: str = "train", seed: int = 0, start: int = 0) -> Iterator[str]:
    """Stories ``start``, ``start + 1``, ... of a split, lazily and without end."""
    index = start
    while True:
        yield story_at(split, index, seed)
        index += 1


def stories(split: str = "train", count: int = 1000, seed: int = 0, start: int = 0) -> list[str]:
    """``count`` stories of a split starting at ``start``; the same arguments give the same list everywhere."""
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an integer >= 0, got {count!r}")
    return list(islice(iter_stories(split, seed, start), count))


def corpus_statistics(texts: Iterable[str]) -> dict:
    """Size and shape of a list of stories.

    ``distinct_words`` counts lower-cased words (letters, inner ' and -).
    ``dialogue_story_share``: fraction of stories with at least one quotation mark;
    ``dialogue_sentence_share``: fraction of sentences that hold a quotation mark (a sentence ends at
    . ! ? before a capital or an opening quote, so '"Hi!" said Sue.' is one sentence).
    """
    texts = list(texts)
    counts, with_quote, sentences, quoted = Counter(), 0, 0, 0
    lengths = []
    for text in texts:
        words = WORD.findall(text)
        lengths.append(len(words))
        counts.update(word.lower() for word in words)
        with_quote += '"' in text
        parts = [part for part in SENTENCE_END.split(text) if part.strip()]
        sentences += len(parts)
        quoted += sum('"' in part for part in parts)
    n = max(len(texts), 1)
    ordered = sorted(lengths) or [0]
    return {"stories": len(texts), "words": sum(lengths), "distinct_words": len(counts),
            "mean_words_per_story": sum(lengths) / n, "min_words": ordered[0], "max_words": ordered[-1],
            "median_words": ordered[len(ordered) // 2],
            "mean_paragraphs": sum(text.count("\n\n") + 1 for text in texts) / n,
            "dialogue_story_share": with_quote / n, "dialogue_sentence_share": quoted / max(sentences, 1),
            "notice": NOTICE}


# ------------------------------------------------------------ the real data set, for comparison
# Figures of the real TinyStories (roneneldan/TinyStories), each with where it comes from.
TINYSTORIES_FIGURES = {
    "stories": ("2,120,000 + 22,000", "dataset card: 2.12 M train and 22 k validation rows"),
    "bytes per story": ("906", "TinyStories-train.txt: 1.92 GB for 2.12 M stories"),
    "words per story": ("160", "a 500-story sample of the train split, measured for this course"),
    "distinct words in 500 stories": ("3,193", "the same 500-story sample"),
}


def comparison_with_tinystories(texts: list[str]) -> list[tuple[str, str, str, str]]:
    """Rows (figure, these stories, real TinyStories, source) comparing a draw of stories with the real set.

    "distinct words in 500 stories" is measured on the first 500 of ``texts``, the
    other figures on all of them.  (The offline grammar has no end: its story count is
    whatever was drawn.)
    """
    texts = list(texts)
    if len(texts) < 500:
        raise ValueError(f"need at least 500 stories to compare with TinyStories, got {len(texts)}")
    stats = corpus_statistics(texts)
    ours = {
        "stories": f"{len(texts):,} (this draw)",
        "bytes per story": f"{sum(len(text.encode()) for text in texts) / len(texts):,.0f}",
        "words per story": f"{stats['mean_words_per_story']:.0f}",
        "distinct words in 500 stories": f"{corpus_statistics(texts[:500])['distinct_words']:,}",
    }
    return [(name, ours[name], real, source) for name, (real, source) in TINYSTORIES_FIGURES.items()]
